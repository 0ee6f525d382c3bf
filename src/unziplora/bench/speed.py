"""`unziplora bench speed`: overhead ratios measured against a baseline in the same run.

- train_step_ratio: one UnZipLoRA step (two branches, masks, mergers, L_orth, prompt
  separation) over one plain PEFT LoRA step on the same target modules and rank, both with the
  same optimiser (ours); train_step_ratio_vs_default_adamw: over the PEFT step with torch's default
  AdamW, as diffusers' DreamBooth-LoRA script builds it (what a user of that script gets);
  train_step_ratio_vs_rank_2r: over a PEFT LoRA of rank 2r, which trains as many A/B values as
  our two branches of rank r (the part of the overhead that two LoRAs cost by themselves).
  Each step's forward (through the loss), backward and update are timed too: the breakdown.
- combined_inference_ratio: generating with both branches (fused, K/V cached) over the base
  pipeline with no LoRA, same steps and seed; fused_inference_ratio: the content LoRA alone,
  fused, over the base pipeline.
Timings are medians over repeats after a warm-up, taken in turns (ours, baseline, ours, ...) so
that a slow spell of a shared machine hits both; min and max are reported too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from ..names import Branch
from ..config import MAX_TRAIN_STEPS, RunConfig, SampleConfig
from ..core.sampling import Conditioning, sample_images, step_batch
from ..core.fuse import fuse_for_generation
from ..core.inject import inject_two_branch_lora
from ..methods.single_lora import target_modules
from ..models.profiles import INFERENCE_PROFILE, resolve_profile
from ..core.prompts import training_prompts
from ..core.objective import diffusion_mse
from ..core.train import Trainer, adamw
from ..models.families import SDXL
from . import write_report
from .e2e import paired_ratio


@dataclass
class Timing:
    median: float
    min: float
    max: float

    @classmethod
    def interleaved(cls, fns: dict, repeats: int, warmup: int = 1) -> dict[str, "Timing"]:
        """Time several functions in turns (a, b, c, a, b, c, ...): a slow spell of a shared
        machine then hits every one of them, not only whichever ran during it."""
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        return {name: cls(statistics.median(t), min(t), max(t)) for name, t in times.items()}


def _trainer(base, image, rank: int, resolution: int) -> Trainer:
    config = RunConfig().with_overrides({
        "model.base_model": base.source, "prompts.subject": "star", "prompts.style": "bands",
        "lora.rank": rank, "train.resolution": resolution, "train.steps": MAX_TRAIN_STEPS,
        "masks.refresh_every": MAX_TRAIN_STEPS,  # timed steps are steady ones: no refresh, never the last
    })
    pipe = base.load()
    profile = resolve_profile("auto", base)
    trainer = Trainer.prepare(config, pipe, image, training_prompts(config.prompts), profile,
                              torch.device("cpu"), torch.float32)
    trainer.train_step()  # the refresh step at 0: masks exist from here on, as in steady training
    return trainer


def peft_baseline_step(unet, latents, embeds, rank: int, noise_scheduler, same_optimizer: bool = True,
                       dtype: torch.dtype = torch.float32, family=SDXL):
    """One plain PEFT LoRA training step on every attention projection, as a closure: the baseline.

    Same targets, rank and loss as ours, and our optimiser unless `same_optimizer` is False (then
    torch's default AdamW, as diffusers' DreamBooth-LoRA script builds it); `latents` has
    `sample`/`resolution` like `CroppedLatents`, `embeds` the trainer's (`EmbeddedTriple`: p's states and pooled).
    With a `dtype` below fp32 (the UNet's weights, on a GPU) it trains as diffusers' DreamBooth-LoRA
    script does: LoRA parameters in fp32, autocast, loss scaling for fp16.
    """
    device = next(unet.parameters()).device
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=target_modules(unet)))
    cast_training_params(unet, torch.float32)  # diffusers' helper: trainable (LoRA) parameters only
    params = [p for p in unet.parameters() if p.requires_grad]
    settings = {"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-4}
    optimizer = adamw(params, **settings) if same_optimizer else torch.optim.AdamW(params, **settings)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(0)
    states = embeds.combined.states.to(device, dtype)
    added = family.added_cond(embeds.combined.pooled, latents.resolution, 1, device, dtype)

    def step():
        t0 = time.perf_counter()
        latent, _ = latents.sample(generator)
        kwargs = {"encoder_hidden_states": states, "added_cond_kwargs": added}
        loss = diffusion_mse(unet, noise_scheduler, latent.to(device), generator, dtype, kwargs)
        optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        scaler.scale(loss).backward()
        t2 = time.perf_counter()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        step.last_phases = {"forward": t1 - t0, "backward": t2 - t1, "update": time.perf_counter() - t2}

    step.last_phases = {}
    return step


STEP_ROWS = {
    "ours": "one training step: UnZipLoRA",
    "peft": "one training step: PEFT LoRA",
    "peft_default_adamw": "one training step: PEFT LoRA, torch default AdamW",
    "peft_rank_2r": "one training step: PEFT LoRA of rank 2r (as many A/B values as our two branches)",
}
JSON_KEYS = {"ours": "unziplora_step", "peft": "peft_lora_step", "peft_default_adamw": "peft_lora_step_default_adamw",
             "peft_rank_2r": "peft_lora_step_rank_2r"}
PHASES = ("forward", "backward", "update")


def train_step_times(base: str, trainer: Trainer, rank: int, repeats: int) -> tuple[dict[str, Timing], dict]:
    """Whole-step timings of the STEP_ROWS steps on the same base model and targets, in turns, and
    the median seconds of each one's phases (forward through the loss, backward, update)."""
    steps = {"ours": (trainer.train_step, lambda: trainer.last_phases)}
    for name, same, r in (("peft", True, rank), ("peft_default_adamw", False, rank), ("peft_rank_2r", True, 2 * rank)):
        step = peft_baseline_step(base.load().unet, trainer.latents, trainer.embeds, r,
                                  trainer.noise_scheduler, same_optimizer=same, family=trainer.family)
        steps[name] = (step, lambda step=step: step.last_phases)
    phases = {name: [] for name in steps}

    def recorded(name, step, phases_of):
        def run():
            step()
            phases[name].append(phases_of())
        return run

    timings = Timing.interleaved({name: recorded(name, *pair) for name, pair in steps.items()}, repeats)
    # the last `repeats` records: the first one is the warm-up call's
    medians = {name: {p: statistics.median(r[p] for r in runs[-repeats:]) for p in PHASES}
               for name, runs in phases.items()}
    medians["paired_ratio_to_peft"] = paired_ratio([sum(r.values()) for r in phases["ours"][-repeats:]],
                                                   [sum(r.values()) for r in phases["peft"][-repeats:]])
    return timings, medians


def inference_times(base: str, trainer: Trainer, rank: int, resolution: int, steps: int, repeats: int) -> dict[str, Timing]:
    """Base pipeline vs both branches (fused) vs content alone (fused), one image per call, with
    the trainer's LoRA and prompt embeddings."""
    state = trainer.lora.state_dict()
    e = trainer.embeds
    sample = SampleConfig(steps=steps, seeds=[0])
    plain = Conditioning(e.combined.states, e.combined.pooled)
    pipes = {"base": base.load()}
    for name, branches in (("combined", (Branch.CONTENT, Branch.STYLE)), ("content_fused", (Branch.CONTENT,))):
        pipe = pipes[name] = base.load()
        lora = inject_two_branch_lora(pipe.unet, INFERENCE_PROFILE, rank)
        for branch in (Branch.CONTENT, Branch.STYLE):
            lora.load_branch(state, branch)
        lora.set_active(set(branches))
        separated = len(branches) == 2
        batch = [step_batch(x.states, 1, sample.guidance_scale) for x in (e.combined, e.content, e.style)]
        fuse_for_generation(pipe.unet, batch[0], batch[1] if separated else None, batch[2] if separated else None)
    generate = {name: (lambda p=p: sample_images(p, plain, sample, resolution)) for name, p in pipes.items()}
    return Timing.interleaved(generate, repeats)


def run_speed(json_path: str | Path | None, base, image, rank: int = 16, resolution: int = 64,
              steps: int = 20, repeats: int = 11, train_steps: int = 600, rounds: int = 3, threads: int = 1) -> dict:
    """Measure, print Markdown tables and write JSON: whole decompositions per method (`rounds`
    turns of `train_steps` steps each; 0 rounds: skipped), one training step, generation. Torch runs
    on `threads` threads (1: robust on a machine other work shares)."""
    from .e2e import decomposition_times, e2e_table, ratio_summary

    torch.set_num_threads(threads)
    e2e = ratio_summary(decomposition_times(base, image, steps=train_steps, rank=rank, resolution=resolution,
                                            rounds=rounds)) if rounds else {}
    trainer = _trainer(base, image, rank, resolution)  # one for both: its LoRA is what generation loads
    train, phases = train_step_times(base, trainer, rank, repeats)
    paired = phases.pop("paired_ratio_to_peft")
    infer = inference_times(base, trainer, rank, resolution, steps, repeats)
    ours = train["ours"].median
    result = {
        "base_model": base.display_name, "rank": rank, "resolution": resolution, "inference_steps": steps, "repeats": repeats,
        "device": "cpu", "threads": torch.get_num_threads(),
        "timings_s": {**{JSON_KEYS[k]: asdict(v) for k, v in train.items()},
                      **{f"generate_{k}": asdict(v) for k, v in infer.items()}},
        "train_step_phases_s": phases,
        "train_step_ratio": ours / train["peft"].median,
        # per turn (forward + backward + update of ours over PEFT's in the same turn): mean and s.e.
        "train_step_ratio_paired": paired,
        "train_step_ratio_vs_default_adamw": ours / train["peft_default_adamw"].median,
        "train_step_ratio_vs_rank_2r": ours / train["peft_rank_2r"].median,
        "combined_inference_ratio": infer["combined"].median / infer["base"].median,
        "fused_inference_ratio": infer["content_fused"].median / infer["base"].median,
        "decomposition": {"steps": train_steps, "rounds": rounds, "methods": e2e},
        "decomposition_ratio": e2e.get("unziplora", {}).get("ratio_to_dreambooth"),
    }
    rows = [(STEP_ROWS[k], v) for k, v in train.items()] + [(f"generate ({k})", v) for k, v in infer.items()]
    print("| measurement | median s | min s | max s |\n|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t.median:.4f} | {t.min:.4f} | {t.max:.4f} |")
    print("\n| training step phase (median ms) | " + " | ".join(phases) + " |\n" + "|---" * (len(phases) + 1) + "|")
    for phase in PHASES:
        print(f"| {phase} | " + " | ".join(f"{p[phase] * 1000:.1f}" for p in phases.values()) + " |")
    if e2e:
        print("\n" + e2e_table(e2e) + "\n")
    print(f"train_step_ratio_paired: {paired['mean']:.3f} ± {paired['se']:.3f} (s.e., {repeats} turns)")
    for key in ("decomposition_ratio", "train_step_ratio", "train_step_ratio_vs_default_adamw",
                "train_step_ratio_vs_rank_2r", "combined_inference_ratio", "fused_inference_ratio"):
        if result[key] is not None:
            print(f"{key}: {result[key]:.3f}")
    write_report(json_path, result)
    return result
