"""`unziplora eval`: the paper's metrics over a folder of generated images (arXiv 2412.04465, Sec. 4)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UnZipLoRAError
from . import DEFAULTS
from . import METRICS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def generated_images(folder: str | Path) -> list[Path]:
    """The images `unziplora generate` wrote into `folder` (its grid.png left out)."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png") \
        if folder.is_dir() else []
    if not files:
        raise UnZipLoRAError(f"no generated images in {folder}; give the folder unziplora generate wrote")
    return files


def check_scores_path(path: Path, inputs) -> None:
    """--json names a new file, or a scores file eval wrote before; never an input, a folder or another file."""
    resolved = path.resolve()
    for given in inputs:
        if Path(given).exists() and Path(given).resolve() == resolved:
            raise UnZipLoRAError(f"--json {path} is the input {given}; choose another file for the scores")
    if not path.parent.is_dir():
        raise UnZipLoRAError(f"--json {path}: the folder {path.parent} does not exist; create it or choose another file")
    if path.is_dir():
        raise UnZipLoRAError(f"--json {path} is a folder; give a file name for the scores, e.g. {path / 'scores.json'}")
    if path.exists() and not _is_scores_file(path):
        raise UnZipLoRAError(f"--json {path} exists and is not a scores file eval wrote; it is left as it is: "
                             "choose another file")


def _is_scores_file(path: Path) -> bool:
    try:
        data = json.loads(path.read_text()[:1_000_000])
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and set(data) == {"images", "scores"}


def evaluate_folder(folder: str | Path, references: list[str | Path], prompt: str | None = None,
                    metrics=METRICS, models: dict[str, str] | None = None, json_path: str | Path | None = None
                    ) -> dict[str, float]:
    """CLIP-I / CLIP-T, DINO and CSD scores of the images in `folder` against the reference images.

    `metrics` chooses among clip, dino and csd; `models` maps a metric to a local folder or hub id
    (default: the paper's models, `metrics.models.DEFAULTS`). With `json_path` the scores are
    written there too.
    """
    from ..core.data import load_image
    from ..run.folder import write_text_atomic
    from . import models as encoders
    from .scores import evaluate

    files = generated_images(folder)
    chosen = set(metrics)
    unknown = chosen - set(METRICS)
    if unknown:
        raise UnZipLoRAError(f"unknown metric {sorted(unknown)[0]!r}; choose from {', '.join(METRICS)}")
    if not chosen:
        raise UnZipLoRAError(f"no metric chosen; pass --metrics with some of {', '.join(METRICS)}")
    if json_path:  # checked before any model loads or image is scored
        check_scores_path(Path(json_path), [folder, *references])
    sources = {**DEFAULTS, **(models or {})}
    loaders = {"clip": encoders.ClipEncoder, "dino": encoders.DinoEncoder, "csd": encoders.CsdEncoder}
    loaded = {name: loaders[name](sources[name]) if name in chosen else None for name in METRICS}
    generated = [load_image(p) for p in files]
    scores = evaluate(generated, [load_image(p) for p in references], [prompt] if prompt else None, **loaded)
    if json_path:
        write_text_atomic(Path(json_path), json.dumps({"images": len(files), "scores": scores}, indent=2))
    return scores
