#!/usr/bin/env python
"""Experiments on the base model's recipe: fine-tune, export, judge.

Fine-tunes the base model's UNet (and text encoders) for --steps more steps with one change to
the recipe, exports it, and judges it with base_model_quality.py. Every arm gets the same start,
steps, learning rate (the cosine schedule at mid-way), latent pool size and EMA, so only the
change differs from the control arm. The start is the training checkpoint's EMA weights
(--checkpoint, from scripts/train_base_model.py) or, with --from-model, an exported model folder
such as the embedded one (no training run needed):

    python benchmarks/recipe_experiment.py --arm control                     # the recipe as it is
    python benchmarks/recipe_experiment.py --arm coarse --periods 0.20 0.30  # coarser pattern periods
    python benchmarks/recipe_experiment.py --arm min-snr --snr-gamma 5       # Min-SNR loss weights
    python benchmarks/recipe_experiment.py --arm v-ztsnr --v-prediction      # v-prediction, zero terminal SNR
    python benchmarks/recipe_experiment.py --arm film --film --from-model src/unziplora/assets/toyworld-sdxl
    python benchmarks/recipe_experiment.py --arm anchored --anchor-phase --from-model src/unziplora/assets/toyworld-sdxl

The world's overrides (world.SPACING_RANGE, the anchored pattern phase) live in this process
only; the world itself is unchanged.
"""

import argparse
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import torch

import unziplora.toyworld.render  # noqa: F401  (the module; the package exports a function of that name)
import unziplora.toyworld.world as world

HERE = Path(__file__).resolve().parent
# base_model_quality.main, loaded without running it (benchmarks/ is not a package)
judge = runpy.run_path(str(HERE / "base_model_quality.py"))["main"]
render_module = sys.modules["unziplora.toyworld.render"]


class _AnchoredPhase:
    """The pattern's phase draw (its first draw of two uniforms) returns 0: every periodic pattern is
    anchored at the canvas centre; the rest of the render's draws are unchanged."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.first = rng, True

    def uniform(self, low=0.0, high=1.0, size=None):
        if self.first and size == 2:
            self.first = False
            return np.zeros(2)
        return self.rng.uniform(low, high, size)


def anchor_pattern_phase() -> None:
    field = render_module._pattern_field
    render_module._pattern_field = lambda style, n, rng, mask: field(style, n, _AnchoredPhase(rng), mask)


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The world's overrides as command-line options (see override_world)."""
    parser.add_argument("--periods", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="pattern period range, fraction of the canvas side (the world's: 0.10 0.22)")
    parser.add_argument("--fixed-angle", type=float, help="every pattern at this angle (degrees)")
    parser.add_argument("--anchor-phase", action="store_true", help="every pattern's phase anchored at the canvas centre")


def override_world(args: argparse.Namespace) -> bool:
    """Apply --periods, --fixed-angle, --anchor-phase in this process only (render processes started
    with "spawn" do not see them). The world's ranges are read at call time by Style.sample and the
    oracles' prototypes. Returns whether anything was overridden."""
    if args.periods:
        world.SPACING_RANGE = tuple(args.periods)
    if args.fixed_angle is not None:
        world.ANGLE_RANGE = (args.fixed_angle, args.fixed_angle)
    if args.anchor_phase:
        anchor_pattern_phase()
    return bool(args.periods or args.fixed_angle is not None or args.anchor_phase)


@torch.no_grad()
def film_unet(trainer):
    """The trainer's UNet rebuilt with resnet_time_scale_shift="scale_shift": the time embedding (which
    carries the pooled text embedding, SDXL's text_time) scales and shifts each resnet's normalised
    features (FiLM, arXiv 1709.07871) instead of adding a bias before the normalisation. Every other
    weight is copied; the shift starts at the old bias as the GroupNorm would have passed it (centred
    per group, divided by the group's std measured on 64 noisy pool latents), the scale at 0."""
    from diffusers import UNet2DConditionModel

    from unziplora.data import sdxl_time_ids
    from unziplora.toyworld.pretrain_data import encode_text

    old, stds, hooks = trainer.c["unet"], {}, []
    for name, module in old.named_modules():
        if getattr(module, "time_emb_proj", None) is not None:
            def hook(norm, inputs, name=name):
                x = inputs[0]
                stds[name] = x.reshape(x.shape[0], norm.num_groups, -1).std(-1).mean(0)
            hooks.append(module.norm2.register_forward_pre_hook(hook))
    means, pool_stds, captions = trainer.latent_pool()
    gen = torch.Generator().manual_seed(0)
    latents = (means[:64] + pool_stds[:64] * torch.randn(means[:64].shape, generator=gen)) * trainer.c["vae"].config.scaling_factor
    t = torch.randint(0, 1000, (64,), generator=gen)
    embeds, pooled = encode_text(trainer.c, captions[:64])
    time_ids = sdxl_time_ids(64, n=64)
    noise = torch.randn(latents.shape, generator=gen)
    old(trainer.noise_scheduler.add_noise(latents, noise, t), t, embeds,
        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    for h in hooks:
        h.remove()
    new = UNet2DConditionModel.from_config({**old.config, "resnet_time_scale_shift": "scale_shift"})
    state = {k: v for k, v in old.state_dict().items() if not k.endswith(("time_emb_proj.weight", "time_emb_proj.bias"))}
    for name, std in stds.items():
        module = old.get_submodule(name)
        width, groups = module.time_emb_proj.out_features, module.norm2.num_groups
        gain = (module.norm2.weight / std.repeat_interleave(width // groups))
        for kind, p in (("weight", module.time_emb_proj.weight), ("bias", module.time_emb_proj.bias)):
            grouped = p.reshape(groups, width // groups, *p.shape[1:])
            centred = (grouped - grouped.mean(1, keepdim=True)).reshape(p.shape)
            shift = gain.reshape(-1, *[1] * (p.dim() - 1)) * centred
            state[f"{name}.time_emb_proj.{kind}"] = torch.cat([torch.zeros_like(p), shift])
    new.load_state_dict(state)
    return new


def start_from_model(trainer, folder: str, steps: int) -> None:
    """Load an exported model folder's weights into the trainer, in the UNet phase at mid-schedule."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    for key in ("vae", "unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        trainer.c[key] = pipe.components[key]
    trainer.c["vae"].requires_grad_(False)
    trainer.phase, trainer.step = "unet", steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", required=True, help="a name: the run goes to WORKDIR/ARM")
    add_world_arguments(parser)
    parser.add_argument("--snr-gamma", type=float, help="Min-SNR-gamma loss weights (arXiv 2303.09556)")
    parser.add_argument("--v-prediction", action="store_true", help="v-prediction on zero-terminal-SNR betas")
    parser.add_argument("--film", action="store_true", help="resnets scaled and shifted by the time + pooled-text embedding")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint", default="build/basemodel", help="the base model's training workdir")
    parser.add_argument("--from-model", help="start from this exported model folder instead of --checkpoint")
    parser.add_argument("--workdir", default="build/recipe_experiment")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-combo", default="4", help="images per combo for the judge")
    args = parser.parse_args()
    override_world(args)
    from unziplora.toyworld.pretrain import PretrainConfig, Pretrainer

    config = PretrainConfig(threads=args.threads, unet_steps=16000, pool_size=8192, ema_decay=0.99,
                            snr_gamma=args.snr_gamma, v_prediction=args.v_prediction)
    arm = Path(args.workdir) / args.arm
    arm.mkdir(parents=True, exist_ok=True)
    if args.from_model:
        config.unet_steps, config.ema_decay = 2 * args.steps, 0.995
        trainer = Pretrainer(config, arm)
        start_from_model(trainer, args.from_model, args.steps)
    else:
        for name in ("checkpoint.json", "checkpoint.safetensors"):  # read-only start: never saved over
            if not (arm / name).exists():
                os.symlink((Path(args.checkpoint) / name).resolve(), arm / name)
        trainer = Pretrainer(config, arm)
    with torch.no_grad():  # start from the checkpoint's EMA weights (if any), with a fresh, faster EMA
        for name, p in trainer.trainable().items():
            if name in trainer.ema:
                p.copy_(trainer.ema[name])
    trainer.ema = {}
    if args.film:
        trainer.c["unet"] = film_unet(trainer)
    if args.film or args.from_model:  # other parameters than the optimiser holds
        trainer._build_optimizer()
    for step in range(args.steps):
        loss = trainer.unet_step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss:.4f}", flush=True)
    model = trainer.export(arm / "model")
    judge(["--model", str(model), "--per-combo", args.per_combo, "--json", str(arm / "quality.json")])


if __name__ == "__main__":
    main()
