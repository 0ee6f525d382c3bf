"""What the recipe measures while it trains: the VAE against the renders, and a quick R1 per checkpoint.

* `vae_check`: the learned family judge and the content oracle on renders and on the VAE's
  reconstructions of the same renders, overall and per family. The VAE bounds what any UNet on
  its latents can draw, so it is measured (and must pass) before the UNet phase starts.
* `quick_r1`: one sample of every seen (class, family) combo (48 images) from the EMA weights,
  sampled as `unziplora bench base-model` samples (the model's own settings: 30 steps, CFG 5,
  guidance rescale 0.7), named by the same oracles. One point of the learning curve.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unziplora.bench.base_model import _draws, _reconstructions, tally
from unziplora.errors import UnZipLoRAError

# The embedded model's sampling settings (its unziplora_defaults.yaml; CFG is the paper's 5.0).
SAMPLING = {"num_inference_steps": 30, "guidance_scale": 5.0, "guidance_rescale": 0.7}
VAE_TOLERANCE = 0.05  # reconstructions within 5 points of the renders, overall and per family


def vae_check(vae, n: int = 2048, seed: int = 0) -> dict:
    """Renders vs the VAE's reconstructions of them; `passed` is the 5-point rule on every family."""
    draws, arrays = _draws(n, seed)
    truth = [(s.subject.cls, s.style.family) for s in draws]
    renders = tally([(a, c, f) for a, (c, f) in zip(arrays, truth)])
    recon = tally([(a, c, f) for a, (c, f) in zip(_reconstructions(vae, arrays), truth)])
    gaps = {fam: renders["family_acc_by_family"][fam] - recon["family_acc_by_family"].get(fam, 0.0)
            for fam in renders["family_acc_by_family"]}
    gaps["overall"] = renders["family_acc"] - recon["family_acc"]
    return {"renders": renders, "reconstructions": recon, "gap": {k: round(v, 4) for k, v in gaps.items()},
            "passed": all(v <= VAE_TOLERANCE for v in gaps.values())}


def ema_pipeline(trainer):
    """A pipeline of the trainer's components with the EMA weights, leaving the trainer untouched."""
    from diffusers import StableDiffusionXLPipeline

    components = dict(trainer.c)
    for key in ("unet", "text_encoder", "text_encoder_2"):
        module = copy.deepcopy(components[key]).eval()
        with torch.no_grad():
            for name, p in module.named_parameters():
                ema = trainer.ema.get(f"{key}.{name}")
                if ema is not None:
                    p.copy_(ema)
        components[key] = module
    return StableDiffusionXLPipeline(**components)


@torch.no_grad()
def quick_r1(trainer, seed: int = 0, steps: int | None = None) -> dict:
    """Right class and right family on one sample of each of the 48 seen combos (`steps`
    replaces the sampling steps: tests)."""
    from unziplora.toyworld import SEEN_COMBOS

    pipe = ema_pipeline(trainer)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"A {cls} in {fam} style" for cls, fam in SEEN_COMBOS]
    images = []
    for start in range(0, len(prompts), 16):  # 16 prompts (32 with CFG) per batch: bounded memory
        batch = prompts[start:start + 16]
        images += list(pipe(batch, height=64, width=64, generator=torch.Generator().manual_seed(seed + start),
                       output_type="np", **{**SAMPLING, **({"num_inference_steps": steps} if steps else {})}).images)
    images = [(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in images]
    return tally([(img, cls, fam) for img, (cls, fam) in zip(images, SEEN_COMBOS)])


def checked_vae(trainer, force: bool = False) -> bool:
    """The VAE check of a trainer past its VAE phase, run once and kept in `vae_check.json`; prints
    the table and says whether the UNet phase may start."""
    if trainer.phase == "vae":
        raise UnZipLoRAError("the VAE phase is not finished: train it first (--vae-only)")
    path = trainer.workdir / "vae_check.json"
    if force or not path.is_file():
        result = vae_check(trainer.c["vae"])
        write_json(path, result)
    result = json.loads(path.read_text())
    print(vae_table(result))
    if not result["passed"]:
        print(f"the VAE misses the renders by more than {VAE_TOLERANCE:.0%} on a family ({path}): "
              "fix it (channels, KL weight, steps) before the UNet phase", file=sys.stderr)
    return result["passed"]


def vae_table(result: dict) -> str:
    lines = ["| family | renders | reconstructions | gap |", "|---|---|---|---|"]
    for fam, gap in result["gap"].items():
        row = "family_acc" if fam == "overall" else None
        got = [r[row] if row else r["family_acc_by_family"][fam] for r in (result["renders"], result["reconstructions"])]
        lines.append(f"| {fam} | {got[0]:.1%} | {got[1]:.1%} | {gap:+.1%} |")
    return "\n".join(lines)


class LearningCurve:
    """The trainer's `on_step`: every `every_s` of UNet training, a `quick_r1` point appended to
    `path` (JSON lines) with the step, the training time so far and the recent loss."""

    def __init__(self, path: Path, every_s: float):
        self.path, self.every_s = Path(path), every_s
        points = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []
        self.last_s = points[-1]["spent_s"] if points else None  # None: from the first UNet step on

    def __call__(self, trainer) -> None:
        if trainer.phase != "unet":
            return
        if self.last_s is None:
            self.last_s = trainer.spent_s
        if trainer.spent_s - self.last_s < self.every_s:
            return
        t0 = time.perf_counter()
        r1 = quick_r1(trainer)
        losses = [e["loss"] for e in trainer.log[-200:] if e["phase"] == "unet"]
        point = {"step": trainer.step, "spent_s": round(trainer.spent_s, 1),
                 "loss_200": round(float(np.mean(losses)), 5) if losses else None,
                 "eval_s": round(time.perf_counter() - t0, 1), **r1}
        with self.path.open("a") as f:
            f.write(json.dumps(point) + "\n")
        self.last_s = trainer.spent_s
        per = ", ".join(f"{k} {v:.0%}" for k, v in r1["family_acc_by_family"].items())
        print(f"\ncurve: step {trainer.step}, {trainer.spent_s / 60:.1f} min: class {r1['class_acc']:.0%}, "
              f"family {r1['family_acc']:.0%} ({per})", flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
