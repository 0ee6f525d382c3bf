"""`unziplora demo`: the real decomposition on the embedded toy-world base model, on any CPU.

The input is a held-out image of the synthetic world (a subject and a style instance the base
model never saw). The demo grid shows: input | content alone (the subject without the palette
or fill) | style alone on another subject | together | style alone on a third subject.
"""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from ..core.data import centre_crop
from ..decompose import decompose
from ..methods import resolve_config
from ..errors import UnZipLoRAError
from ..generate import Mode, generate
from ..models.embedded import EMBEDDED_MODEL, demo_image
from ..run.folder import save_grid

# What the demo sets on top of the model's own defaults (its unziplora_defaults.yaml: 64 px,
# rank 16, lr 1e-3, 30 sampling steps); tests point it at a tiny pipeline.
DEMO_OVERRIDES: dict = {}


def free_folder(path: Path) -> Path:
    """`path` if nothing is there yet, else the first free `path-2`, `path-3`, ... beside it."""
    candidate, n = path, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def run_demo(out_dir: str | Path = "runs/demo", steps: int = 600, force: bool = False, progress: bool = True) -> Path:
    """Decompose the demo image into `out_dir`; where that folder exists already (an earlier demo,
    with whatever the user generated or exported into it), into the next free `out_dir-N` instead,
    unless `force` replaces it."""
    out_dir = Path(out_dir) if force else free_folder(Path(out_dir))
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        raise UnZipLoRAError(
            f"the embedded base model is missing at {EMBEDDED_MODEL}; "
            "reinstall unziplora or rebuild it with python -m recipes.toyworld_model (in the repository)"
        )
    subject, style, image = demo_image()
    resolved = resolve_config({
        **DEMO_OVERRIDES, "train.steps": steps, "model.base_model": str(EMBEDDED_MODEL),
        "prompts.subject": subject.cls, "prompts.style": style.family,
    })
    config = resolved.config
    t0 = time.perf_counter()
    run = decompose(image, out_dir, config, force=force, progress=progress, sources=resolved.sources)
    second, third = [c for c in ("star", "heart", "arrow", "cross", "circle") if c != subject.cls][:2]
    panels = [  # (label, mode, prompt): the split at a glance
        ("content alone", Mode.CONTENT, f"A <c> {subject.cls}"),
        (f"style: {second}", Mode.STYLE, f"A {second} in <s> style"),
        ("together", Mode.BOTH, f"A <c> {subject.cls} in <s> style"),
        (f"style: {third}", Mode.STYLE, f"A {third} in <s> style"),
    ]
    tiles = [centre_crop(image, config.train.resolution)]
    for i, (label, mode, prompt) in enumerate(panels, 1):
        paths = generate(prompt, run.path / "samples" / f"demo-{i}-{mode.value}", mode, run=run.path,
                         force=True, seeds=config.sample.seeds[:1])
        tiles.append(Image.open(paths[0]))
    save_grid(tiles, run.path / "demo.png", columns=5, labels=["input"] + [label for label, _, _ in panels])
    print(f"demo: {subject.cls} in {style.family} style, {steps} steps, {time.perf_counter() - t0:.0f} s -> {run.path / 'demo.png'}")
    return run.path
