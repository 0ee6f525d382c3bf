"""Train (or resume) the embedded toy-world base model, then export it.

    python -m recipes.toyworld_model --workdir build/basemodel --total-min 150 --curve-every-min 20
    python -m recipes.toyworld_model --workdir build/basemodel --export src/unziplora/assets/toyworld-sdxl

The VAE is checked against the renders (vae_check.json) before the UNet phase starts; the UNet
phase appends a quick R1 to curve.jsonl every --curve-every-min minutes of training.
"""

import argparse
import json
import sys
from pathlib import Path

from unziplora.errors import UnZipLoRAError

from .curve import LearningCurve, checked_vae
from .pretrain import PretrainConfig, Pretrainer


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.toyworld_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="build/basemodel", help="checkpoints live here (resumes if present)")
    parser.add_argument("--budget-min", type=float, help="stop (with a checkpoint) after this many minutes")
    parser.add_argument("--total-min", type=float,
                        help="stop (with a checkpoint) when training has used this many minutes of the machine "
                             "in all, over every resume (CPU time of the process / its threads)")
    parser.add_argument("--curve-every-min", type=float, default=20.0,
                        help="a quick R1 of the EMA weights every this many minutes of UNet training (0: never)")
    parser.add_argument("--vae-check", action="store_true", help="measure the trained VAE against the renders and exit")
    parser.add_argument("--export", help="write the EMA weights as an fp16 pipeline folder here and exit")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (1 is robust when other jobs share the cores)")
    parser.add_argument("--from-model", help="start from this pipeline folder (its VAE, UNet, text encoders)")
    parser.add_argument("--lr", type=float, help="peak learning rate of the UNet phase")
    parser.add_argument("--warmup", type=int, help="warm-up steps of the UNet phase")
    parser.add_argument("--vae-only", action="store_true", help="stop when the VAE phase is done")
    parser.add_argument("--device", help="where the models train: cpu (default) or cuda; on cuda the budget is "
                                         "wall time")
    parser.add_argument("--render-workers", type=int, help="processes drawing the renders (default 0: in-process)")
    parser.add_argument("--pool-size", type=int, help="renders encoded once after the VAE phase (default 24000)")
    parser.add_argument("--skip-vae-gate", action="store_true",
                        help="train the UNet even when the VAE misses its check (dry runs of the pipeline only)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    overrides = {k: v for k, v in (("vae_steps", args.vae_steps), ("unet_steps", args.unet_steps),
                                   ("threads", args.threads), ("from_model", args.from_model),
                                   ("lr", args.lr), ("warmup", args.warmup), ("device", args.device),
                                   ("render_workers", args.render_workers), ("pool_size", args.pool_size))
                 if v is not None}
    if args.total_min is not None:
        overrides["budget_s"] = args.total_min * 60
    try:
        trainer = Pretrainer(PretrainConfig(**overrides), Path(args.workdir))
        if args.export:
            path = trainer.export(Path(args.export))
            print(json.dumps({"exported": str(path), "phase": trainer.phase, "step": trainer.step}))
            return 0
        if args.vae_check or (trainer.phase == "unet" and not args.vae_only and not trainer.config.from_model):
            if not checked_vae(trainer, force=args.vae_check) and not args.skip_vae_gate:
                return 1
            if args.vae_check:
                return 0
    except UnZipLoRAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.curve_every_min:
        trainer.on_step = LearningCurve(trainer.workdir / "curve.jsonl", args.curve_every_min * 60)
    done = trainer.run(args.budget_min * 60 if args.budget_min else None, progress=not args.quiet,
                       vae_only=args.vae_only)
    print(json.dumps({"done": done, "phase": trainer.phase, "step": trainer.step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
