#!/usr/bin/env python
"""Pilot: does a less compressed latent let the UNet draw the pattern families?

Trains a base model from scratch with the recipe's code but a VAE that downsamples 2x (64 px ->
32x32 latents) with SDXL's 4 latent channels (the committed model: 4x, 16x16x8), shortened to
VAE 1,500 steps and UNet 2,000 steps of batch 16 (~1 h on 2 threads), exports it and judges it
with base_model_quality.py (add --diagnose for the per-timestep caption table).

    python benchmarks/latent_pilot.py [--workdir build/latent_pilot] [--threads 2]
"""

import argparse
import runpy
from pathlib import Path

from unziplora.toyworld.pretrain import BASE_SPEC_2X, PretrainConfig, Pretrainer

HERE = Path(__file__).resolve().parent
# base_model_quality.main, loaded without running it (benchmarks/ is not a package)
judge = runpy.run_path(str(HERE / "base_model_quality.py"))["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/latent_pilot", help="resumes if a checkpoint is there")
    parser.add_argument("--threads", type=int, default=2)
    args, judge_args = parser.parse_known_args()
    config = PretrainConfig(vae_steps=1500, unet_steps=2000, batch=16, pool_size=8192, ema_decay=0.995,
                            threads=args.threads, spec=BASE_SPEC_2X)
    workdir = Path(args.workdir)
    trainer = Pretrainer(config, workdir)
    trainer.run()
    model = trainer.export(workdir / "model")
    judge(["--model", str(model), "--json", str(workdir / "quality.json"), *judge_args])


if __name__ == "__main__":
    main()
