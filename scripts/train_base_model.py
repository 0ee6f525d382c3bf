#!/usr/bin/env python
"""Train (or resume) the embedded toy-world base model, then export it.

    python scripts/train_base_model.py --workdir build/basemodel --budget-min 80   # resumable
    python scripts/train_base_model.py --workdir build/basemodel --export src/unziplora/assets/toyworld-sdxl
    python scripts/train_base_model.py --workdir build/vae2x --latent 2x --vae-only   # a VAE for GPU UNet runs
    python scripts/train_base_model.py --workdir build/vae2x --latent 2x --export-vae benchmarks/assets/vae-2x.safetensors
"""

import argparse
import json
import sys
from pathlib import Path

from unziplora.errors import UnZipLoRAError
from unziplora.toyworld.model_files import write_vae_file
from unziplora.toyworld.pretrain import LATENT_SPECS, PretrainConfig, Pretrainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/basemodel", help="checkpoints live here (resumes if present)")
    parser.add_argument("--budget-min", type=float, help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--export", help="write the EMA weights as an fp16 pipeline folder here and exit")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (1 is robust when other jobs share the cores)")
    parser.add_argument("--latent", choices=tuple(LATENT_SPECS), default="4x",
                        help="VAE downsampling x latent channels: 4x into 8 (the committed model), 2x into 4 "
                        "(BASE_SPEC_2X) or 2x into 8 (2x8)")
    parser.add_argument("--vae-only", action="store_true", help="stop when the VAE phase is done")
    parser.add_argument("--export-vae", metavar="FILE", help="write the trained VAE alone (fp16 safetensors) and exit")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    config = PretrainConfig(spec=LATENT_SPECS[args.latent])
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
    if args.export or args.export_vae:
        try:
            path = trainer.export(Path(args.export)) if args.export else write_vae_file(trainer, Path(args.export_vae))
        except UnZipLoRAError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps({"exported": str(path), "phase": trainer.phase, "step": trainer.step}))
        return 0
    done = trainer.run(args.budget_min * 60 if args.budget_min else None, progress=not args.quiet,
                       vae_only=args.vae_only)
    print(json.dumps({"done": done, "phase": trainer.phase, "step": trainer.step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
