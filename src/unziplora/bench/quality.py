"""`unziplora bench quality`: every method on held-out images of the toy world, scored by its oracles.

Per method (same steps, rank, learning rate and generation settings for all, B-LoRA too: its
reference rank 64 would be full rank on this model), over images and
seeds (mean and std):
- subject_alignment: content-alone outputs vs the true subject (content oracle);
- style_alignment:   style-alone outputs (another class, in <s> style) vs the true style;
- style_leakage:     the style oracle on content-alone outputs (lower is better);
- subject_leakage:   the content oracle on style-alone outputs (lower is better);
- combined:          together outputs vs both (mean of content and style similarity);
- cross:             A's content with B's style vs A's subject and B's style.
A `ceiling` row scores fresh renders of the true subject and style, a `floor` row the base
model with no LoRA on the same prompts.

With `resume=True` a rerun of the same command reuses every run and every score the last one
finished (each keyed by its exact settings), so a run of several CPU hours can span sessions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import RunConfig, SampleConfig
from ..errors import UnZipLoRAError
from ..generate import generate
from ..methods import Method
from ..run.folder import save_grid, write_text_atomic
from .memory import reset_peak_rss, rss_mb
from ..toyworld import CLASSES, content_similarity, heldout_images, render, style_similarity
from . import QUALITY_ROWS
from . import write_report

# Bench rows that are another method with other settings. B-LoRA needs a content and a style
# module; where the base model's own profile names none (the embedded model's probe found no
# style module), this row runs it on the two modules SDXL's profile names (profiles/sdxl.yaml, `b_lora`).
VARIANTS = {"b-lora-sdxl-blocks": (Method.B_LORA, {"model.profile": "sdxl"})}
METHODS = QUALITY_ROWS
METRICS = ("subject_alignment", "style_alignment", "style_leakage", "subject_leakage", "combined", "cross")


def _images(folder: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("seed*.png"))]


def _train(image, spec, out: Path):
    from ..decompose import decompose

    return decompose(image, out, spec, force=True, progress=False)


def _key(*parts) -> str:
    """A digest of everything a cached result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> dict | None:
    """The JSON record at `path` when it was written for exactly `key`, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


def _train_or_reuse(row: str, image, spec, out: Path, resume: bool) -> tuple[Path, dict]:
    """Train one run, or reuse the finished run of an earlier invocation with the same settings
    and base model (its fingerprint)."""
    key = _key(row, spec.config.to_yaml(), spec.base.fingerprint())
    record_path = out.with_name(out.name + ".bench.json")
    record = _cached(record_path, key) if resume else None
    if record is not None and (out / "manifest.json").is_file():
        return out, record
    reset_peak_rss()
    t0 = time.perf_counter()
    path = _train(image, spec, out).path
    record = {"key": key, "train_s": time.perf_counter() - t0, "peak_rss_mb": rss_mb("VmHWM")}
    write_text_atomic(record_path, json.dumps(record))
    return path, record


def score_run(run_path: Path, other_path: Path | None, subject_img, style_img, other_style_img, cls: str,
              sample: SampleConfig, work: Path) -> tuple[dict[str, list[float]], list[Image.Image]]:
    """Generate the four kinds of outputs of one run, score them, and return one example of each."""
    other_cls = next(c for c in CLASSES if c != cls)

    def gen(prompt: str, name: str, mode: str, **sources) -> list[Image.Image]:
        generate(prompt, work / name, mode, sample=sample, force=True, **sources)
        return _images(work / name)

    content = gen(f"A <c> {cls}", "content", "content", run=run_path)
    style = gen(f"A {other_cls} in <s> style", "style", "style", run=run_path)
    both = gen(f"A <c> {cls} in <s> style", "both", "both", run=run_path)
    examples = [content[0], style[0], both[0]]
    out = {
        "subject_alignment": [content_similarity(i, subject_img) for i in content],
        "style_leakage": [style_similarity(i, style_img) for i in content],
        "style_alignment": [style_similarity(i, style_img) for i in style],
        "subject_leakage": [content_similarity(i, subject_img) for i in style],
        "combined": [(content_similarity(i, subject_img) + style_similarity(i, style_img)) / 2 for i in both],
    }
    if other_path is not None:
        cross = gen(f"A <c> {cls} in <s> style", "cross", "cross", content_run=run_path, style_run=other_path)
        out["cross"] = [(content_similarity(i, subject_img) + style_similarity(i, other_style_img)) / 2 for i in cross]
        examples.append(cross[0])
    return out, examples


def _summary(values: dict[str, list[float]]) -> dict[str, dict]:
    """Mean and std of each metric, and its values in (image, seed) order: every row of the table holds
    the same images and seeds in the same order, so two rows can be compared pair by pair."""
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": [round(float(x), 6) for x in v]}
            for k, v in values.items() if v}


def run_quality(json_path, base, workdir: Path, n_images: int = 12, seeds: int = 2, steps: int = 600,
                rank: int = 16, lr: float = 1e-3, sample_steps: int = 30, methods=METHODS,
                resume: bool = False) -> dict:
    from ..methods import resolve_config, resolve_spec

    triples = heldout_images(n_images, 64)
    own = resolve_config(base=base).config.sample  # CFG and its rescale are the model's
    sample = SampleConfig(steps=sample_steps, seeds=list(range(seeds)), guidance_scale=own.guidance_scale,
                          guidance_rescale=own.guidance_rescale)
    results = {}
    examples: dict[int, list[Image.Image]] = {i: [] for i in range(len(triples))}
    for method in methods:
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        runs, records = [], []
        try:
            for i, (subject, style, image) in enumerate(triples):
                row_method, variant = VARIANTS[method] if method in VARIANTS else (Method(method), {})
                spec = resolve_spec({
                    "prompts.subject": subject.cls, "prompts.style": style.family,
                    "train.steps": steps, "train.resolution": 64, "lora.rank": rank, "lora.lr": lr,
                    "sample.steps": sample_steps, "sample.seeds": [0], "train.checkpoint_every": 0, **variant,
                }, method=row_method, base=base)
                path, record = _train_or_reuse(method, image, spec, workdir / method / f"img{i:02d}", resume)
                runs.append(path)
                records.append(record)
        except UnZipLoRAError as exc:  # e.g. B-LoRA on a base model whose profile has no style modules
            print(f"{method}: skipped: {exc}")
            results[method] = {"skipped": str(exc)}
            continue
        for i, (subject, style, image) in enumerate(triples):
            j = (i + 1) % len(triples)
            other = runs[j] if len(triples) > 1 else None
            work = workdir / method / f"gen{i:02d}"
            key = _key(records[i]["key"], records[j]["key"] if other else None, asdict(sample))
            cached = _cached(work / "scores.json", key) if resume else None
            if cached is None:
                per_run, shown = score_run(runs[i], other, image, image, triples[j][2], subject.cls, sample, work)
                write_text_atomic(work / "scores.json", json.dumps({"key": key, "scores": per_run}))
            else:
                per_run = cached["scores"]
                shown = [_images(work / kind)[0] for kind in ("content", "style", "both", "cross")
                         if (work / kind).is_dir()]
            examples[i] += [image, *shown]
            for k, v in per_run.items():
                values[k] += v
        results[method] = {**_summary(values), "train_s_per_image": float(np.mean([r["train_s"] for r in records])),
                           "peak_rss_mb": max(r["peak_rss_mb"] for r in records)}
    ran = [m for m in methods if "skipped" not in results[m]]
    for i, tiles in examples.items():  # one row per method: input | content | style | both | cross
        if ran:
            save_grid([t.resize((64, 64)) for t in tiles], workdir / f"grid_img{i:02d}.png", columns=len(tiles) // len(ran))
    results["ceiling"] = _summary(_ceiling(triples, seeds))
    results["floor"] = _summary(_floor(base, triples, sample))
    from .ladder import ablation_rows, ablation_table, ladder_table, quality_rungs

    rungs, ablations = quality_rungs(results), ablation_rows(results, METRICS)
    table = _table(results) + "\n\n" + ladder_table(rungs) + ("\n\n" + ablation_table(ablations) if ablations else "")
    print(table)
    report = {"methods": results, "images": n_images, "seeds": seeds, "rungs": rungs, "ablations": ablations,
              "settings": {"steps": steps, "rank": rank, "lr": lr, "sample_steps": sample_steps, "base_model": base.display_name,
                           "guidance_scale": sample.guidance_scale, "guidance_rescale": sample.guidance_rescale}}
    write_report(json_path, report, table)
    return report


def _ceiling(triples, seeds: int) -> dict[str, list[float]]:
    """Fresh renders of the true subject and style (new poses/seeds): the best any method can do."""
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for i, (subject, style, image) in enumerate(triples):
        other_subject, other_style, other_image = triples[(i + 1) % len(triples)]
        for seed in range(seeds):
            same = render(subject, style, 64, seed=1000 + seed)
            values["subject_alignment"].append(content_similarity(same, image))
            values["style_alignment"].append(style_similarity(render(other_subject, style, 64, seed=2000 + seed), image))
            values["combined"].append((content_similarity(same, image) + style_similarity(same, image)) / 2)
            crossed = render(subject, other_style, 64, seed=3000 + seed)
            values["cross"].append((content_similarity(crossed, image) + style_similarity(crossed, other_image)) / 2)
    return values


def _floor(base, triples, sample: SampleConfig) -> dict[str, list[float]]:
    """The base model with no LoRA, prompted with the same words (no identifier)."""
    import torch

    pipe = base.load()
    values: dict[str, list[float]] = {m: [] for m in METRICS}

    def gen(prompt: str) -> list[Image.Image]:
        return [pipe(prompt, num_inference_steps=sample.steps, guidance_scale=sample.guidance_scale,
                     guidance_rescale=sample.guidance_rescale, height=64, width=64,
                     generator=torch.Generator().manual_seed(seed)).images[0] for seed in sample.seeds]

    for i, (subject, style, image) in enumerate(triples):
        other_cls = next(c for c in CLASSES if c != subject.cls)
        _, other_style, other_image = triples[(i + 1) % len(triples)]
        for img in gen(f"A {subject.cls}"):
            values["subject_alignment"].append(content_similarity(img, image))
            values["style_leakage"].append(style_similarity(img, image))
        for img in gen(f"A {other_cls} in {style.family} style"):
            values["style_alignment"].append(style_similarity(img, image))
            values["subject_leakage"].append(content_similarity(img, image))
        for img in gen(f"A {subject.cls} in {style.family} style"):
            values["combined"].append((content_similarity(img, image) + style_similarity(img, image)) / 2)
        for img in gen(f"A {subject.cls} in {other_style.family} style"):
            values["cross"].append((content_similarity(img, image) + style_similarity(img, other_image)) / 2)
    return values


def _table(results: dict) -> str:
    head = "| method | " + " | ".join(METRICS) + " | train s/image | peak RSS MB |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |")
            continue
        cells = [f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" if m in r else "-" for m in METRICS]
        extra = [f"{r['train_s_per_image']:.1f}" if "train_s_per_image" in r else "-",
                 f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"]
        lines.append(f"| {name} | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)
