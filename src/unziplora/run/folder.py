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

While training, decompose writes RUN.partial/ (plus checkpoint/, see checkpoint.py), locked by
its process, and renames it to RUN only when complete; an interrupted RUN.partial/ is continued
with --resume (outputs.py). The manifest is written last and checked whole when read
(manifest.py); weight files are checked from their headers before they are loaded (headers.py).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..names import Branch
from ..errors import UnZipLoRAError
from .manifest import MANIFEST_FILE, RUN_FORMAT_VERSION, Manifest, check_run_folder, read_manifest
from .outputs import (  # noqa: F401  (the names every writer imports from here)
    apply_umask,
    atomic_output_dir,
    check_output,
    disk_full_error,
    glob_escape,
    is_disk_full,
    partial_dir,
    refuse_existing,
    resumable_output_dir,
    unique_suffix,
    writing_errors,
)
from .lock import pid_alive

STATE_FILE = "unziplora.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _temp_for(path: Path) -> Path:
    """The temp name a file is written under: hidden, beside it, with the writer's pid, thread and a
    random part (two threads of one process never share one); a dead writer's temp files of the
    same name are removed first (a kill leaves them behind)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)(?:-.+)?")
    if path.parent.is_dir():
        for old in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
            match = pattern.fullmatch(old.name)
            if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
                old.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.tmp-{unique_suffix()}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, flushed, then rename)."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        with writing_errors(path):
            tmp.write_text(text)
            _fsync(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file in the same folder, flushed, then rename)."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        with writing_errors(path):
            try:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
            except SafetensorError as exc:  # safetensors' writer names no file: name ours
                if is_disk_full(exc):
                    raise disk_full_error(path) from None
                raise
            _fsync(tmp)
            apply_umask(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_safetensors(path: Path, check=None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; `check(path)` first vets its header (headers.py), so a
    file too large or of the wrong shapes is refused before any tensor is read."""
    from ..models.headers import read_header

    read_header(path)  # a pickle, a damaged header: one line
    if check is not None:
        check(path)
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

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        path = check_run_folder(path)
        return cls(path, read_manifest(path))

    @property
    def rank(self) -> int:
        return self.manifest.config.lora.rank

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def lora_dir(self, branch: Branch) -> Path:
        folder = self.path / f"{branch.value}_lora"
        if not (folder / LORA_WEIGHT_NAME).is_file():
            raise UnZipLoRAError(f"{folder} has no {LORA_WEIGHT_NAME}; the run folder is incomplete")
        return folder

    def check_state(self, base=None) -> None:
        """The state file's header against the manifest (format, rank) and `base` (headers.BaseShapes)."""
        from ..models.headers import check_state_header

        if not self.state_path.is_file():
            raise UnZipLoRAError(f"{self.state_path} is missing; the run folder is incomplete")
        check_state_header(self.state_path, self.rank, base, RUN_FORMAT_VERSION)

    def load_state(self, base=None) -> dict[str, torch.Tensor]:
        from .numbers import check_weights

        self.check_state(base)
        state = load_safetensors(self.state_path)
        check_weights(state, self.state_path)
        return state

    def summary(self) -> str:
        """A few human-readable lines for `unziplora info`."""
        m, p = self.manifest, self.manifest.prompts
        config = m.config.to_dict()
        lines = [
            f"run:          {self.path}",
            f"base model:   {m.base_model}" + (f" (revision {m.revision})" if m.revision else ""),
            f"subject:      {p.subject!r}  (token <c> = {p.identifier!r})",
            f"style:        {p.style_words!r}  (token <s>)",
            f"prompts:      p={p.combined!r}  p_c={p.content!r}  p_s={p.style!r}",
            f"method:       {m.method.value}",
            f"rank / steps: {m.config.lora.rank} / {m.steps}  (seed {m.seed})",
        ]
        sources = {k: v for k, v in m.config_sources.items() if k != "model.base_model"}
        if sources:  # where the settings that are not the paper's defaults came from
            shown = []
            for key, source in sources.items():
                section, _, name = key.partition(".")
                shown.append(f"{key}={config[section][name]} ({source})")
            lines.append("settings:     " + ", ".join(shown))
        if m.mask_fraction is not None:  # UnZipLoRA runs only
            lines.append(f"columns held: content {m.mask_fraction['content']:.1%}, style {m.mask_fraction['style']:.1%}")
        if m.final_loss is not None:
            lines.append(f"final loss:   {m.final_loss:.4f}")
        lines.append(f"train time:   {m.timings.get('train_s', 0):.1f} s")
        lines.append(f"created:      {m.created} with unziplora {m.versions['unziplora']}")
        return "\n".join(lines)
