"""The run folder: its layout, atomic writing, and reading it back with clear errors.

    RUN/
      content_lora/pytorch_lora_weights.safetensors   content branch as an ordinary diffusers LoRA
      style_lora/pytorch_lora_weights.safetensors     style branch as an ordinary diffusers LoRA
      unziplora.safetensors                           both branches, mergers and masks (combined use)
      manifest.json                                   base model, prompts, tokens, config, versions, timings
      config.yaml                                     the full config, reusable with --config
      input.png                                       the training image as read
      preview.png                                     input | content alone | style alone | together
      loss.csv, loss.png                              the loss curve

While training, decompose writes RUN.partial/ (plus checkpoint/, see checkpoint.py) and renames
it to RUN only when complete; an interrupted RUN.partial/ is continued with --resume.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .branch import Branch
from .errors import UnZipLoRAError
from .manifest import MANIFEST_FILE, RUN_FORMAT_VERSION, read_manifest

STATE_FILE = "unziplora.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def refuse_existing(out_dir: Path, force: bool) -> None:
    """One clear error when `out_dir` holds something and `force` is off (checked before any work)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise UnZipLoRAError(f"{out_dir} already exists and is not empty; choose another --out or pass --force")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the permissions the user's umask allows,
    as a plain open() would: temp folders (mkdtemp, 0700) and some writers' files (0600) would
    otherwise keep their private modes after the rename."""
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`; an existing `out_dir` (allowed by --force) is swapped out first."""
    apply_umask(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out_dir)


@contextlib.contextmanager
def _disk_full_is_an_error(where: Path):
    """ENOSPC becomes one line; the writers below leave no half-written file behind."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise UnZipLoRAError(
            f"the disk is full while writing {exc.filename or where}; nothing half-written was kept: "
            "free some space and run again"
        ) from None


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, force: bool = False):
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` in one rename.

    An existing non-empty `out_dir` is refused unless `force`; on any error the temporary
    folder is removed and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with _disk_full_is_an_error(out_dir):
            yield tmp
            _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_dir(out_dir: Path) -> Path:
    """Where a run is written while it trains: OUT.partial, a stable name so it can be resumed."""
    return out_dir.with_name(f"{out_dir.name}.partial")


@contextlib.contextmanager
def resumable_output_dir(out_dir: str | Path, force: bool, resume: bool, keep: Callable[[Path], bool]):
    """Like atomic_output_dir, but the work folder is OUT.partial and survives a failure when
    `keep(work)` says it holds something to resume from; otherwise it is removed.

    An existing OUT.partial is continued with `resume`, discarded with `force`, refused otherwise.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    work = partial_dir(out_dir)
    if work.exists() and not resume:
        if not force:
            raise UnZipLoRAError(
                f"{work} holds an interrupted run; pass --resume to continue it or --force to start over"
            )
        shutil.rmtree(work)
    elif resume and not work.is_dir():
        raise UnZipLoRAError(f"nothing to resume: {work} does not exist; run without --resume")
    work.mkdir(parents=True, exist_ok=True)
    try:
        with _disk_full_is_an_error(out_dir):
            yield work
            _move_into_place(work, out_dir)
    except BaseException:
        if not keep(work):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, flushed, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file in the same folder, flushed, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _fsync(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        raise UnZipLoRAError(f"{path} is not a .safetensors file; unziplora never loads pickled weights")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnZipLoRAError(f"{path} is corrupt or not a safetensors file ({exc}); re-create or re-download it") from None


def save_grid(images: list[Image.Image], path: Path, columns: int, labels: list[str] | None = None) -> None:
    """Tile images into one PNG, `columns` wide, with optional captions below each. Tiles are shown
    at the first image's size, small ones enlarged (nearest neighbour) to 128 px so that a caption
    fits under each."""
    if not images:
        raise ValueError("save_grid: no images")
    width, height = images[0].size
    if labels and width < 128:
        width, height = 128, round(height * 128 / width)
    label_h = 14 if labels else 0
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * (height + label_h)), "white")
    if labels:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * width, (i // columns) * (height + label_h)
        grid.paste(image.convert("RGB").resize((width, height), Image.Resampling.NEAREST), (x, y))
        if labels:
            draw.text((x + 2, y + height + 1), labels[i][: max(4, width // 6)], fill="black")
    grid.save(path)


class RunFolder:
    """A finished run folder; its manifest is checked whole on open (manifest.py)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        path = Path(path)
        if not path.is_dir():
            raise UnZipLoRAError(f"run folder {path} does not exist; give the --out folder of a decompose run")
        if not (path / MANIFEST_FILE).is_file():
            raise UnZipLoRAError(f"{path} is not an unziplora run folder (no {MANIFEST_FILE})")
        return cls(path, read_manifest(path))

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def lora_dir(self, branch: Branch) -> Path:
        folder = self.path / f"{branch.value}_lora"
        if not (folder / LORA_WEIGHT_NAME).is_file():
            raise UnZipLoRAError(f"{folder} has no {LORA_WEIGHT_NAME}; the run folder is incomplete")
        return folder

    def load_state(self) -> dict[str, torch.Tensor]:
        if not self.state_path.is_file():
            raise UnZipLoRAError(f"{self.state_path} is missing; the run folder is incomplete")
        return load_safetensors(self.state_path)

    def summary(self) -> str:
        """A few human-readable lines for `unziplora info`."""
        m = self.manifest
        p = m["prompts"]
        lines = [
            f"run:          {self.path}",
            f"base model:   {m['base_model']}",
            f"subject:      {p['subject']!r}  (token <c> = {p['identifier']!r})",
            f"style:        {p['style_words']!r}  (token <s>)",
            f"prompts:      p={p['combined']!r}  p_c={p['content']!r}  p_s={p['style']!r}",
            f"method:       {m.get('method', 'unziplora')}",
            f"rank / steps: {m['config']['lora']['rank']} / {m['steps']}  (seed {m['seed']})",
        ]
        sources = {k: v for k, v in (m.get("config_sources") or {}).items() if k != "model.base_model"}
        if sources:  # where the settings that are not the paper's defaults came from
            shown = []
            for key, source in sources.items():
                section, _, name = key.partition(".")
                shown.append(f"{key}={m['config'][section][name]} ({source})")
            lines.append("settings:     " + ", ".join(shown))
        if "mask_fraction" in m:  # UnZipLoRA runs only
            lines.append(f"columns held: content {m['mask_fraction']['content']:.1%}, style {m['mask_fraction']['style']:.1%}")
            lines.append(f"final loss:   {m['final_loss']:.4f}")
        lines.append(f"train time:   {m['timings'].get('train_s', 0):.1f} s")
        lines.append(f"created:      {m['created']} with unziplora {m['versions']['unziplora']}")
        return "\n".join(lines)
