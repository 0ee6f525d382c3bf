#!/usr/bin/env python
"""Base-model recipe arms on a GPU machine: train the UNet phase for a time budget, judge, keep the weights.

On 2 CPU cores one UNet step of the recipe takes ~1.2 s (batch 32), so "does more training fix the
pattern families?" costs hours there. On a GPU an arm trains many times the CPU recipe's samples in
minutes (measured on one H100 shared by four arms: 230 ms per step of batch 1,024 for the 4x model,
530 ms for the 2x one; two 2x arms of batch 1,024 beside two others ran out of its 80 GB). Each arm
starts from a trained VAE (the VAE phase is not repeated): the embedded model's, with fresh UNet and
text encoders (`--start vae`) or with its own (`--start model`), or weights from files (`--init`, e.g.
the 2x retrain's VAE and EMA). The schedule (warm-up, cosine decay) is fitted to the time budget
from the step time measured over the first 100 steps, so the decay completes (`--max-steps` fixes
it instead, to redo an arm). The arm's EMA is then judged by the world's oracles as
base_model_quality.py judges the embedded model (seen and held-out combos, CFG 5, 30 steps), and its
EMA weights are written in fp16 (UNet and both text encoders: with the VAE a whole model).

    python benchmarks/gpu_pretrain.py --arm scratch --start vae --batch 1024 --minutes 4 --out OUT
    python benchmarks/gpu_pretrain.py --arm 4x-finetune --start model --lr 2e-4 --warmup 100 --minutes 4 --out OUT
    python benchmarks/gpu_pretrain.py --arm 4x-finetune --export OUT/4x-finetune.safetensors --record R.json --out MODEL_DIR
    python benchmarks/gpu_pretrain.py --arm wide --start vae --unet-width 48 96 192 --minutes 8 --out OUT  # capacity
    python benchmarks/gpu_pretrain.py --arm wide --export OUT/wide-part*.safetensors --out MODEL_DIR

Weights over --shard-mb are written in parts (ARM-partK.safetensors): the device tool brings files of
at most 16 MB back. --pool-only builds the latent pool in --workdir and stops, so that arms run side
by side can share one pool (a link to it in each arm's workdir) instead of each rendering its own.
benchmarks/gpu_session.sh is the prepared device script that does both.

--fixed-angle, --anchor-phase and --periods train on a narrower world (in this process only, so with
--workers 0; the judge's oracles are the world's): does taking the random angle and phase out let the
UNet draw the periodic families? Two such arms fit 2 CPU cores at --threads 1 each.

--unet-width trains a UNet of other channel widths from scratch (with --start vae): the capacity lever
for the pattern families (tried: README, "More samples, on a GPU"); (48, 96, 192) is ~2.3x the parameters and
keeps the whole model under the 40 MB the embedded one may weigh. --export rebuilds the UNet at the
arm's widths (they travel in the weights file's metadata).

The recipe code is src/unziplora/toyworld/pretrain.py (device="cuda", render_workers for the pool).
"""

import argparse
import dataclasses
import json
import runpy
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unziplora.demo import EMBEDDED_MODEL
from unziplora.toyworld import HELDOUT_COMBOS, SEEN_COMBOS
from unziplora.toyworld.pretrain import LATENT_SPECS, PretrainConfig, Pretrainer

HERE = Path(__file__).resolve().parent
judge = runpy.run_path(str(HERE / "base_model_quality.py"))["judge"]
recipe_experiment = runpy.run_path(str(HERE / "recipe_experiment.py"))  # the world's overrides
MODULES = ("unet", "text_encoder", "text_encoder_2")


def start_tensors(init_files: list[str], start: str) -> tuple[dict[str, torch.Tensor], float]:
    """Weights an arm starts from, as "<module>.<name>" tensors, and the latent scaling factor: from
    --init files (an arm's output, or weights taken from a training checkpoint; the VAE's file carries
    the scaling factor in its metadata), else the embedded model's VAE, plus its UNet and text
    encoders with start="model". Init files without a VAE (an arm's own weights: it trained on the
    embedded VAE) get the embedded model's VAE and scaling factor."""
    tensors, meta = load_weights(init_files)
    if any(k.startswith("vae.") for k in tensors):
        return tensors, float(meta.get("scaling_factor", "nan"))
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(EMBEDDED_MODEL))
    keys = ("vae",) + (MODULES if start == "model" and not init_files else ())
    tensors |= {f"{k}.{n}": t for k in keys for n, t in getattr(pipe, k).state_dict().items()}
    return tensors, pipe.vae.config.scaling_factor


def enter_unet_phase(trainer: Pretrainer, tensors: dict[str, torch.Tensor], scaling: float) -> list[str]:
    """Load the given modules into the trainer (the VAE is required: its phase is skipped), then
    enter the UNet phase with that VAE's scaling factor. Returns the modules loaded."""
    loaded = []
    for key in ("vae",) + MODULES:
        part = {n[len(key) + 1:]: t.float() for n, t in tensors.items() if n.startswith(key + ".")}
        if part:
            trainer.c[key].load_state_dict(part)
            loaded.append(key)
    if "vae" not in loaded or scaling != scaling:
        raise SystemExit("error: the start weights hold no VAE (or no scaling_factor); give --init with the VAE's file")
    trainer._finish_vae()  # freezes the VAE, enters the UNet phase, builds the UNet optimiser
    trainer.c["vae"].register_to_config(scaling_factor=scaling)
    return loaded


def train(trainer: Pretrainer, budget_s: float, fit_after: int = 100, log_every: int = 500) -> dict:
    """unet_step until the budget is spent; after `fit_after` steps unet_steps is set to what the
    rest of the budget holds at the measured rate, so the cosine decay ends with the budget."""
    t0 = time.monotonic()
    losses = []
    while trainer.step < trainer.config.unet_steps and time.monotonic() - t0 < budget_s:
        losses.append(trainer.unet_step())
        if trainer.step == fit_after:
            rate = (time.monotonic() - t0) / fit_after
            trainer.config.unet_steps = min(trainer.config.unet_steps, int(0.97 * budget_s / rate))
            print(f"{rate * 1000:.1f} ms/step -> unet_steps {trainer.config.unet_steps}", flush=True)
        if trainer.step % log_every == 0:
            recent = losses[-log_every:]
            print(f"step {trainer.step}: loss {sum(recent) / len(recent):.4f} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
    seconds = time.monotonic() - t0
    return {"steps": trainer.step, "planned_steps": trainer.config.unet_steps, "train_s": round(seconds, 1),
            "ms_per_step": round(1000 * seconds / max(1, trainer.step), 2),
            "samples_seen": trainer.step * trainer.config.batch,
            "final_loss_mean_500": round(sum(losses[-500:]) / max(1, len(losses[-500:])), 5)}


def ema_pipeline(trainer: Pretrainer):
    from diffusers import StableDiffusionXLPipeline

    with torch.no_grad():
        for name, p in trainer.trainable().items():
            if name in trainer.ema:  # (the EMA starts at the first step)
                p.copy_(trainer.ema[name])
    pipe = StableDiffusionXLPipeline(**trainer.c)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_weights(weights: dict[str, torch.Tensor], out: Path, arm: str, metadata: dict[str, str],
                 shard_mb: float) -> list[Path]:
    """Write the arm's weights as OUT/ARM.safetensors, or in parts of at most `shard_mb` (in key order)
    as OUT/ARM-partK.safetensors, each with the same metadata; every file goes through a temporary
    name, so no half-written weights file ever has a final name."""
    shards, size = [{}], 0
    for name in sorted(weights):
        nbytes = weights[name].numel() * weights[name].element_size()
        if shards[-1] and size + nbytes > shard_mb * 1e6:
            shards.append({})
            size = 0
        shards[-1][name] = weights[name]
        size += nbytes
    names = [f"{arm}.safetensors"] if len(shards) == 1 else [f"{arm}-part{k + 1}.safetensors" for k in range(len(shards))]
    paths = []
    for name, shard in zip(names, shards):
        tmp = out / (name + ".tmp")
        save_file(shard, str(tmp), metadata=metadata)
        paths.append(tmp.replace(out / name))
    return paths


def load_weights(paths: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An arm's weights from its file or parts, and their metadata (unet_block_out_channels, latent)."""
    tensors, meta = {}, {}
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
            meta.update(f.metadata() or {})
    return tensors, meta


def export_arm(weights: Path | list[Path], record: dict, base: Path, out: Path) -> Path:
    """A whole pipeline folder: `base` (the model the arm started from) with the arm's UNet and text
    encoders, fp16, its recipe.json extended by how the arm trained (`record`: its --arm result or the
    same keys), and fresh checksums. A UNet of other widths (--unet-width) is rebuilt at the widths
    the weights' metadata names; an arm on another latent (--latent) carries its VAE in its weights
    and gets it, with a UNet sized for that latent. `weights`: the arm's file, or its parts."""
    import shutil

    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from unziplora.toyworld.model_files import RECIPE_FILE, vae_at, write_checksums

    pipe = StableDiffusionXLPipeline.from_pretrained(str(base))
    tensors, meta = load_weights([weights] if isinstance(weights, (str, Path)) else list(weights))
    widths = json.loads(meta.get("unet_block_out_channels", "null")) or list(pipe.unet.config.block_out_channels)
    latent = meta.get("latent", "4x")
    if latent != "4x":  # the arm's own VAE, and the UNet's sample size in its latent pixels
        pipe.register_modules(vae=vae_at(latent, tensors, float(meta["scaling_factor"])))
    factor, channels = 2 ** (len(pipe.vae.config.block_out_channels) - 1), pipe.vae.config.latent_channels
    unet_config = {**pipe.unet.config, "block_out_channels": widths, "in_channels": channels, "out_channels": channels,
                   "sample_size": LATENT_SPECS[latent].sample_size // factor}
    if any(unet_config[k] != pipe.unet.config[k] for k in ("block_out_channels", "in_channels", "sample_size")):
        pipe.register_modules(unet=UNet2DConditionModel.from_config(unet_config))
    for key in MODULES:
        getattr(pipe, key).load_state_dict({n[len(key) + 1:]: t for n, t in tensors.items() if n.startswith(key + ".")})
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)  # the profile, tokenizers, scheduler and VAE stay as they are
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    for config in [tmp / "model_index.json", *tmp.glob("*/config.json")]:  # no path of this machine in the model
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    recipe = json.loads((base / RECIPE_FILE).read_text())
    recipe["fine_tune"] = record
    (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str))
    write_checksums(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", required=True)
    parser.add_argument("--out", required=True, help="the arm's weights go here: ARM.safetensors")
    parser.add_argument("--workdir", help="pool cache and ARM.json (default: OUT/work/ARM)")
    parser.add_argument("--start", choices=("vae", "model"), default="vae",
                        help="without --init: the embedded model's VAE, or its whole model")
    parser.add_argument("--init", nargs="+", default=[], help="safetensors files of start weights (see start_tensors)")
    parser.add_argument("--latent", choices=tuple(LATENT_SPECS), default="4x",
                        help="the model shape (pretrain.LATENT_SPECS); other than 4x: --init with that VAE's file")
    parser.add_argument("--unet-width", type=int, nargs=3, metavar=("C1", "C2", "C3"),
                        help="the UNet's channel widths (the embedded model's: 32 64 128); needs --start vae; "
                        "with --init, the widths of that arm")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--snr-gamma", type=float)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--pool-size", type=int, default=64000)
    parser.add_argument("--workers", type=int, default=4, help="render processes for the latent pool")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget")
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (two 1-thread arms share 2 cores)")
    recipe_experiment["add_world_arguments"](parser)
    parser.add_argument("--judge-per-combo", type=int, default=4)
    parser.add_argument("--judge-steps", type=int, default=30)
    parser.add_argument("--export", metavar="WEIGHTS", nargs="+", help="instead of training: write the embedded "
                        "model with an arm's weights (ARM.safetensors, or all its parts) as a pipeline folder OUT")
    parser.add_argument("--shard-mb", type=float, default=15.0, help="weights over this are written in parts")
    parser.add_argument("--pool-only", action="store_true", help="build the latent pool in --workdir, then stop")
    parser.add_argument("--record", help="with --export: a JSON of how the arm trained, kept in recipe.json")
    args = parser.parse_args()
    if args.export:
        record = json.loads(Path(args.record).read_text()) if args.record else {"arm": args.arm}
        print(export_arm([Path(p) for p in args.export], record, EMBEDDED_MODEL, Path(args.out)))
        return

    if args.latent != "4x" and not args.init:
        parser.error(f"--latent {args.latent} needs --init with that latent's VAE (train_base_model.py --export-vae)")
    if args.unet_width and args.start != "vae":
        parser.error("--unet-width trains a UNet of other widths: use it with --start vae (and --init to go on from such an arm)")
    if recipe_experiment["override_world"](args) and args.workers:
        parser.error("--periods/--fixed-angle/--anchor-phase live in this process only: use them with --workers 0")
    spec = LATENT_SPECS[args.latent]
    if args.unet_width:
        spec = dataclasses.replace(spec, block_out_channels=tuple(args.unet_width))
    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out / "work" / args.arm
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":  # TF32 matmuls: this recipe's precision needs are fp32-training-grade, not bitwise
        torch.backends.cuda.matmul.allow_tf32 = True
    config = PretrainConfig(device=args.device, render_workers=args.workers, batch=args.batch, lr=args.lr,
                            warmup=args.warmup, snr_gamma=args.snr_gamma, ema_decay=args.ema_decay,
                            pool_size=args.pool_size, unet_steps=args.max_steps, checkpoint_every_s=1e9,
                            threads=args.threads, spec=spec)
    trainer = Pretrainer(config, workdir)
    tensors, scaling = start_tensors(args.init, args.start)
    result = {"arm": args.arm, "args": vars(args), "scaling_factor": scaling,
              "started_from": enter_unet_phase(trainer, tensors, scaling)}
    print(f"{args.arm}: started from {result['started_from']}", flush=True)
    t0 = time.monotonic()
    trainer.latent_pool()
    if trainer.workers is not None:  # the pool is built: free the cores for the other arms
        trainer.workers.terminate()
        trainer.workers = None
    result["pool_s"] = round(time.monotonic() - t0, 1)
    print(f"pool of {args.pool_size} in {result['pool_s']} s", flush=True)
    if args.pool_only:
        return
    result["training"] = train(trainer, 60 * args.minutes)
    print(json.dumps(result["training"]), flush=True)

    pipe = ema_pipeline(trainer)
    kept = MODULES + (("vae",) if args.latent != "4x" else ())  # another latent: its VAE travels with the arm
    weights = {f"{k}.{n}": t.detach().to("cpu", torch.float16).contiguous()
               for k in kept for n, t in trainer.c[k].state_dict().items()}
    files = save_weights(weights, out, args.arm, shard_mb=args.shard_mb,
                         metadata={"arm": args.arm, "steps": str(trainer.step), "latent": args.latent,
                                   "scaling_factor": repr(float(trainer.c["vae"].config.scaling_factor)),
                                   "unet_block_out_channels": json.dumps(list(spec.block_out_channels))})
    result["weights"] = [f.name for f in files]
    t0 = time.monotonic()
    with torch.no_grad():
        for name, combos in (("seen", SEEN_COMBOS), ("heldout", HELDOUT_COMBOS)):
            result[name] = judge(pipe, combos, args.judge_per_combo, args.judge_steps, 5.0, 0)
            print(name, {k: round(v, 3) for k, v in result[name].items() if k.endswith("_acc")},
                  result[name]["family_acc_by_family"], flush=True)
    result["judge_s"] = round(time.monotonic() - t0, 1)
    (workdir / f"{args.arm}.json").write_text(json.dumps(result, indent=1, default=str))
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
