"""Whole decompositions timed end to end: what a user waits for, per method, as ratios to DreamBooth-LoRA.

Every method decomposes the same image with the same steps, rank, resolution, checkpoint cadence
(the product's default: every 100 steps, for the methods that keep checkpoints) and no preview
grid, in turns (UnZipLoRA, DreamBooth-LoRA, B-LoRA, ...) so that a slow spell of a shared machine
hits every method. The final preview grid is the product's, not the method's (three generations:
content alone, style alone, together; the baselines draw none), so the comparison leaves it out
and one more row, UnZipLoRA as `decompose` runs it by default, shows what it adds. Each run's
manifest splits its time into loading, preparing, training and saving (weights, preview, loss
curve, model card); the table shows where a method's extra time goes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from ..names import Method

# The rows (bench quality's names): B-LoRA on SDXL's two modules, which every SDXL-shaped model has;
# the last is UnZipLoRA with its final preview grid, as `decompose` runs it by default.
WITH_PREVIEW = "unziplora with its preview"
E2E_ROWS = ("unziplora", "dreambooth-lora", "b-lora-sdxl-blocks", WITH_PREVIEW)
BASELINE = Method.DREAMBOOTH_LORA.value
PHASES = ("load_s", "prepare_s", "train_s", "save_s", "preview_s")


def decomposition_times(base, image, rows=E2E_ROWS, steps: int = 600, rank: int = 16, resolution: int = 64,
                        rounds: int = 3, workdir: Path | None = None) -> dict:
    """{row: {"total_s": [per round], "phases": {phase: [per round]}}} of whole decompositions."""
    from ..decompose import decompose
    from ..methods import resolve_spec
    from .quality import VARIANTS

    times = {row: {"total_s": [], "phases": {p: [] for p in PHASES}} for row in rows}
    with tempfile.TemporaryDirectory(prefix="unziplora-e2e-", dir=workdir) as tmp:
        for r in range(rounds):
            for row in rows:
                name = Method.UNZIPLORA.value if row == WITH_PREVIEW else row
                method, variant = VARIANTS[name] if name in VARIANTS else (Method(name), {})
                spec = resolve_spec({"prompts.subject": "triangle", "prompts.style": "bands", "train.steps": steps,
                                     "lora.rank": rank, "train.resolution": resolution,
                                     "train.no_preview": row != WITH_PREVIEW, **variant},
                                    method=method, base=base)
                t0 = time.perf_counter()
                run = decompose(image, Path(tmp) / f"{row}-{r}", spec, force=True, progress=False)
                times[row]["total_s"].append(time.perf_counter() - t0)
                for phase in PHASES:
                    times[row]["phases"][phase].append(run.manifest.timings.get(phase, 0.0))
    return times


def ratio_summary(times: dict, baseline: str = BASELINE) -> dict:
    """Per method: the median seconds, and the ratio to the baseline per round (paired: the same
    round's runs share the machine's state), its mean and standard error."""
    out = {}
    for method, t in times.items():
        ratio = paired_ratio(t["total_s"], times[baseline]["total_s"])
        out[method] = {"median_s": statistics.median(t["total_s"]), "ratio_to_dreambooth": ratio["mean"],
                       "ratio_se": ratio["se"],
                       "phases_median_s": {p: statistics.median(v) for p, v in t["phases"].items()}}
    return out


def paired_ratio(ours: list[float], baseline: list[float]) -> dict:
    """Mean and standard error of ours[i] / baseline[i]: the runs of one turn share the machine's state."""
    ratios = [a / b for a, b in zip(ours, baseline)]
    se = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
    return {"mean": statistics.fmean(ratios), "se": se}


def e2e_table(summary: dict) -> str:
    lines = ["| method | whole decomposition s | x DreamBooth-LoRA (± s.e.) | load s | prepare s | train s | save s | "
             "of which preview s |", "|---|---|---|---|---|---|---|---|"]
    for method, s in summary.items():
        p = s["phases_median_s"]
        lines.append(f"| {method} | {s['median_s']:.1f} | {s['ratio_to_dreambooth']:.2f} ± {s['ratio_se']:.2f} | "
                     + " | ".join(f"{p[k]:.1f}" for k in PHASES) + " |")
    return "\n".join(lines)
