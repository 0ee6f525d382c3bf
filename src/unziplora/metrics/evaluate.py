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
    sources = {**DEFAULTS, **(models or {})}
    loaders = {"clip": encoders.ClipEncoder, "dino": encoders.DinoEncoder, "csd": encoders.CsdEncoder}
    loaded = {name: loaders[name](sources[name]) if name in chosen else None for name in METRICS}
    generated = [load_image(p) for p in files]
    scores = evaluate(generated, [load_image(p) for p in references], [prompt] if prompt else None, **loaded)
    if json_path:
        write_text_atomic(Path(json_path), json.dumps({"images": len(files), "scores": scores}, indent=2))
    return scores
