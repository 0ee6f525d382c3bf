"""`unziplora bench base-model`: can the toy-world base model draw its world? (rung R1 of the ladder)

For every (class, family) combo, seen in pretraining or held out, the model draws `per_combo`
images of "A {class} in {family} style"; the content oracle names the class and the learned
family judge the fill. Two rows first bound what any model can score: the renders themselves
(the oracles' own accuracy) and the VAE's reconstructions of them (samples cannot be better than
what the VAE can draw). Sampling uses the model's own settings (its unziplora_defaults.yaml).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from . import write_report

TARGETS = {"seen": {"class_acc": 0.9, "family_acc": 0.9}, "held-out": {"class_acc": 0.7, "family_acc": 0.7}}


def tally(labelled) -> dict:
    """Accuracy over (image, true class, true family) triples, with the per-family accuracy."""
    from ..toyworld import classify_content
    from ..toyworld.family_judge import judge_families

    named = judge_families([image for image, _, _ in labelled])
    per_family: dict[str, Counter] = {}
    right_class = right_family = 0
    for (image, cls, fam), got in zip(labelled, named):
        right_class += classify_content(image) == cls
        right_family += got == fam
        per_family.setdefault(fam, Counter())[got == fam] += 1
    n = len(labelled)
    return {"images": n, "class_acc": right_class / n, "family_acc": right_family / n,
            "family_acc_by_family": {k: v[True] / v.total() for k, v in sorted(per_family.items())}}


def _draws(n: int, seed: int):
    from ..toyworld import pretraining_sample, render_array

    rng = np.random.default_rng(seed)
    samples = [pretraining_sample(rng) for _ in range(n)]
    return samples, np.stack([render_array(s.subject, s.style, 64, s.seed) for s in samples])


@torch.no_grad()
def _reconstructions(vae, arrays: np.ndarray) -> np.ndarray:
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    recon = vae.decode(latents).sample.float()
    return ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def _samples(pipe, combos, per_combo: int, sample, seed: int) -> list:
    labelled = []
    for i, (cls, fam) in enumerate(combos):
        images = pipe(f"A {cls} in {fam} style", num_images_per_prompt=per_combo, num_inference_steps=sample.steps,
                      guidance_scale=sample.guidance_scale, guidance_rescale=sample.guidance_rescale,
                      height=64, width=64, generator=torch.Generator().manual_seed(seed + i)).images
        labelled += [(image, cls, fam) for image in images]
    return labelled


def run_base_model(json_path=None, base=None, per_combo: int = 4, renders: int = 128,
                   seed: int = 0, steps: int | None = None) -> dict:
    """Rows: renders, VAE reconstructions, samples of seen combos, samples of held-out combos.
    `steps` replaces the model's sampling steps (tests)."""
    from ..methods import resolve_config
    from ..models.base import EMBEDDED_NAME, BaseModel
    from ..toyworld import HELDOUT_COMBOS, SEEN_COMBOS

    base = base or BaseModel.resolve(EMBEDDED_NAME)
    sample = resolve_config({"sample.steps": steps}, base=base).config.sample
    pipe = base.load()
    t0 = time.perf_counter()
    draws, arrays = _draws(renders, seed)
    truth = [(s.subject.cls, s.style.family) for s in draws]
    rows = {
        "renders": tally([(a, c, f) for a, (c, f) in zip(arrays, truth)]),
        "vae reconstructions": tally([(a, c, f) for a, (c, f) in zip(_reconstructions(pipe.vae, arrays), truth)]),
        "seen": tally(_samples(pipe, SEEN_COMBOS, per_combo, sample, seed)),
        "held-out": tally(_samples(pipe, HELDOUT_COMBOS, per_combo, sample, seed + 10_000)),
    }
    passed = {name: all(rows[name][k] >= v for k, v in goal.items()) for name, goal in TARGETS.items()}
    table = _table(rows)
    print(table)
    report = {"base_model": base.display_name, "per_combo": per_combo, "sampling": {"steps": sample.steps,
              "guidance_scale": sample.guidance_scale, "guidance_rescale": sample.guidance_rescale},
              "rows": rows, "targets": TARGETS, "passed": passed, "seconds": round(time.perf_counter() - t0, 1)}
    write_report(json_path, report, table)
    return report


def _table(rows: dict) -> str:
    lines = ["| what | images | right class | right family | per family |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        per = ", ".join(f"{k} {v:.0%}" for k, v in r["family_acc_by_family"].items())
        lines.append(f"| {name} | {r['images']} | {r['class_acc']:.1%} | {r['family_acc']:.1%} | {per} |")
    return "\n".join(lines)
