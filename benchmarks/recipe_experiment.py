#!/usr/bin/env python
"""Experiments on the base model's recipe: fine-tune, export, judge.

Fine-tunes the base model's UNet (and text encoders), from its training checkpoint's EMA
weights, for --steps more steps with one change to the recipe, exports it, and judges it with
base_model_quality.py. Every arm gets the same start, steps, learning rate (the cosine schedule
at mid-way), latent pool size and EMA, so only the change differs from the control arm:

    python benchmarks/recipe_experiment.py --arm control                     # the recipe as it is
    python benchmarks/recipe_experiment.py --arm coarse --periods 0.20 0.30  # coarser pattern periods
    python benchmarks/recipe_experiment.py --arm min-snr --snr-gamma 5       # Min-SNR loss weights
    python benchmarks/recipe_experiment.py --arm v-ztsnr --v-prediction      # v-prediction, zero terminal SNR

The override of world.SPACING_RANGE lives in this process only; the world itself is unchanged.
Needs the training checkpoint (scripts/train_base_model.py --workdir build/basemodel).
"""

import argparse
import os
import runpy
from pathlib import Path

import torch

import unziplora.toyworld.world as world

HERE = Path(__file__).resolve().parent
# base_model_quality.main, loaded without running it (benchmarks/ is not a package)
judge = runpy.run_path(str(HERE / "base_model_quality.py"))["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", required=True, help="a name: the run goes to WORKDIR/ARM")
    parser.add_argument("--periods", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="pattern period range, fraction of the canvas side (the world's: 0.10 0.22)")
    parser.add_argument("--snr-gamma", type=float, help="Min-SNR-gamma loss weights (arXiv 2303.09556)")
    parser.add_argument("--v-prediction", action="store_true", help="v-prediction on zero-terminal-SNR betas")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint", default="build/basemodel", help="the base model's training workdir")
    parser.add_argument("--workdir", default="build/recipe_experiment")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.periods:
        world.SPACING_RANGE = tuple(args.periods)  # read at call time by Style.sample and the oracles' prototypes
    from unziplora.toyworld.pretrain import PretrainConfig, Pretrainer

    config = PretrainConfig(threads=args.threads, unet_steps=16000, pool_size=8192, ema_decay=0.99,
                            snr_gamma=args.snr_gamma, v_prediction=args.v_prediction)
    arm = Path(args.workdir) / args.arm
    arm.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint.json", "checkpoint.safetensors"):  # read-only start: never saved over
        if not (arm / name).exists():
            os.symlink((Path(args.checkpoint) / name).resolve(), arm / name)
    trainer = Pretrainer(config, arm)
    with torch.no_grad():  # start from the committed (EMA) weights, with a fresh, faster EMA
        for name, p in trainer.trainable().items():
            p.copy_(trainer.ema[name])
    trainer.ema = {}
    for step in range(args.steps):
        loss = trainer.unet_step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {loss:.4f}", flush=True)
    model = trainer.export(arm / "model")
    judge(["--model", str(model), "--json", str(arm / "quality.json")])


if __name__ == "__main__":
    main()
