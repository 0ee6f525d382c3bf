"""Benchmarks that print tables and write JSON (ratios against a baseline in the same run).

`run_bench` is the entry point of `unziplora bench`: every option left as None takes the
benchmark's own default (its function's signature), so the defaults live in one place.
"""

from __future__ import annotations

import json
from pathlib import Path



# The repository (or installed package) the benchmarks run from: results name paths relative to it,
# so a committed result says "src/unziplora/assets/toyworld-sdxl", not where one machine keeps it.
SOURCE_ROOT = Path(__file__).resolve().parents[3]


def portable(value, root: Path = SOURCE_ROOT):
    """`value` with every absolute path inside `root` made relative to it (lists and mappings too)."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        try:
            return Path(value).resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            return value
    return value


def write_report(json_path: str | Path | None, report: dict, table: str | None = None) -> None:
    """The report as JSON at `json_path` (paths inside the repository relative to it), written
    atomically, and, given a table, the same table as Markdown beside it (FILE.md)."""
    from ..run.folder import write_text_atomic

    if not json_path:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(portable(report), indent=2))
    if table is not None:
        write_text_atomic(path.with_suffix(".md"), table + "\n")


BENCHES = ("base-model", "quality", "speed", "memory")
# The rows `bench quality` can compare: the methods, and B-LoRA on SDXL's modules as a variant
# (bench/quality.py METHODS; named here so the CLI needs no torch import).
QUALITY_ROWS = ("unziplora", "unziplora-m1", "unziplora-m2", "b-lora", "b-lora-sdxl-blocks", "dreambooth-lora",
                "inspiration-tree")


def run_bench(which: str, json_path: str | Path | None = None, base_model: str | None = None, device: str = "cpu",
              **options) -> dict:
    """Run one benchmark. `base_model` defaults to the embedded toy-world model (base-model, speed,
    quality);
    memory measures the full-size SDXL UNet with random weights, on the CPU or, with
    device="cuda", on a GPU. Options: images, seeds, train_steps, workdir, resume, methods (quality);
    repeats, steps (speed, quality); rank; resolutions, threads, rounds (memory)."""
    from ..errors import UnZipLoRAError

    if which not in BENCHES:
        raise UnZipLoRAError(f"unknown benchmark {which!r}; choose from {', '.join(BENCHES)}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - {"images", "seeds", "train_steps", "workdir", "resume", "repeats", "steps", "rank",
                            "resolutions", "threads", "rounds", "per_combo", "methods"}
    if unknown:
        raise TypeError(f"run_bench: unknown options {sorted(unknown)}")

    def pick(*names: str) -> dict:
        return {n: given[n] for n in names if n in given}

    if which == "memory" and device == "cuda":
        from .cuda import run_cuda

        return run_cuda(json_path, **pick("resolutions", "rank", "repeats"))
    if which == "memory":
        from .memory import run_memory

        chosen = pick("resolutions", "rank", "repeats", "threads", "rounds")
        chosen["repeats"] = min(chosen.get("repeats", 2), 3)  # each repeat is a full SDXL step on the CPU
        return run_memory(json_path, **chosen)
    from ..models.base import EMBEDDED_NAME, BaseModel
    from ..models.embedded import demo_image

    base = BaseModel.resolve(base_model or EMBEDDED_NAME)
    if which == "base-model":
        from .base_model import run_base_model

        return run_base_model(json_path, base, **pick("per_combo"))
    if which == "speed":
        from .speed import run_speed

        chosen = pick("rank", "steps", "repeats", "threads", "rounds")
        chosen.update({"train_steps": given["train_steps"]} if "train_steps" in given else {})
        return run_speed(json_path, base, demo_image()[2], **chosen)
    from .quality import run_quality

    chosen = pick("rank", "resume", "methods")
    chosen.update({k: given[n] for k, n in (("n_images", "images"), ("seeds", "seeds"), ("steps", "train_steps"),
                                             ("sample_steps", "steps")) if n in given})
    return run_quality(json_path, base, Path(given.get("workdir", "runs/bench")), **chosen)
