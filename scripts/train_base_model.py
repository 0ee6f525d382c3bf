#!/usr/bin/env python
"""Train (or resume) the embedded toy-world base model, then export it.

    python scripts/train_base_model.py --workdir build/basemodel --budget-min 80   # resumable
    python scripts/train_base_model.py --workdir build/basemodel --export src/unziplora/assets/toyworld-sdxl
"""

import argparse
import json
import sys
from pathlib import Path

from unziplora.errors import UnZipLoRAError
from unziplora.toyworld.pretrain import BASE_SPEC, BASE_SPEC_2X, PretrainConfig, Pretrainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/basemodel", help="checkpoints live here (resumes if present)")
    parser.add_argument("--budget-min", type=float, help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--export", help="write the EMA weights as an fp16 pipeline folder here and exit")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (1 is robust when other jobs share the cores)")
    parser.add_argument("--latent", choices=("4x", "2x"), default="4x",
                        help="VAE downsampling: 4x into 8 channels (the committed model) or 2x into 4 (BASE_SPEC_2X)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    config = PretrainConfig(spec=BASE_SPEC_2X if args.latent == "2x" else BASE_SPEC)
    if args.vae_steps is not None:
        config.vae_steps = args.vae_steps
    if args.unet_steps is not None:
        config.unet_steps = args.unet_steps
    if args.threads is not None:
        config.threads = args.threads
    try:
        trainer = Pretrainer(config, Path(args.workdir))
    except UnZipLoRAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.export:
        path = trainer.export(Path(args.export))
        print(json.dumps({"exported": str(path), "phase": trainer.phase, "step": trainer.step}))
        return 0
    done = trainer.run(args.budget_min * 60 if args.budget_min else None, progress=not args.quiet)
    print(json.dumps({"done": done, "phase": trainer.phase, "step": trainer.step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
