"""`unziplora bench memory`: the full-size SDXL UNet architecture (random weights) on CPU.

Random weights change neither memory nor compute, so the real architecture, built from its
config, answers what SDXL weights would: peak memory of one training step at several
resolutions with and without gradient checkpointing (`sdxl_train_peak_mb`), the parameter
counts of both branches and of the optimiser state, and `train_step_ratio_sdxl` (one
UnZipLoRA step over one plain PEFT LoRA step on the same targets and rank).

Every configuration runs in its own child process: peak resident memory (VmHWM) is then that
configuration's alone, a child that runs out of memory cannot take the parent with it, and
an address-space limit turns "would not fit" into a reported row instead of the OOM killer.
The step itself is `Trainer.train_step`, the code a real run executes; only the data
(random latents and prompt embeddings of SDXL's shapes) is synthetic.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from ..core.layer import BRANCHES
from . import write_report

MB = 2**20


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory ("VmRSS") or its high-water mark ("VmHWM") in MiB; NaN off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RandomLatents:
    """Stands in for `CroppedLatents`: latents of one image at `resolution` px (SDXL's 4 channels;
    FLUX.1's VAE: 16)."""

    def __init__(self, resolution: int, channels: int = 4):
        self.resolution, self.channels = resolution, channels

    def sample(self, generator: torch.Generator):
        side = self.resolution // 8
        return torch.randn(1, self.channels, side, side, generator=generator), (0, 0)


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    from ..models.architectures import sdxl_unet_config

    return UNet2DConditionModel.from_config(sdxl_unet_config())


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SDXL's training betas


def _random_embeds(unet, generator: torch.Generator):
    """Prompt embeddings of the shapes `unet` takes (SDXL: 77 x 2048 states, 1280 pooled), as an `EmbeddedTriple`."""
    from ..core.prompts import Embedded, EmbeddedTriple

    c = unet.config
    pooled_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return EmbeddedTriple(*(Embedded(torch.randn(1, 77, c.cross_attention_dim, generator=generator),
                                     torch.randn(1, pooled_dim, generator=generator)) for _ in range(3)))


def sdxl_trainer(unet, resolution: int, rank: int, checkpointing: bool, profile=None,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32):
    """A `Trainer` over `unet` with the built-in SDXL profile (profiles/sdxl.yaml) unless another is given;
    on a GPU the frozen UNet in `dtype` (fp16: loss scaling, LoRA in fp32, as `Trainer.prepare`)."""
    from ..config import RunConfig
    from ..core.inject import inject_two_branch_lora
    from ..models.profiles import load_profile
    from ..core.train import Trainer, build_optimizer

    config = RunConfig().with_overrides({"lora.rank": rank, "train.resolution": resolution,
                                         "train.gradient_checkpointing": checkpointing})
    unet.requires_grad_(False)
    unet.to(device, dtype)
    lora = inject_two_branch_lora(unet, profile or load_profile("sdxl"), rank, config.lora.init, config.train.seed)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    generator = torch.Generator().manual_seed(0)
    random = _random_embeds(unet, generator)
    embeds = type(random)(*(e.to(device) for e in (random.combined, random.content, random.style)))
    return Trainer(config, SimpleNamespace(unet=unet), lora, RandomLatents(resolution), embeds,
                   device, dtype, build_optimizer(config, lora), _noise_scheduler(), generator,
                   torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))


def flux_trainer(transformer, resolution: int, rank: int, checkpointing: bool, text_tokens: int = 512,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.bfloat16):
    """A `Trainer` over a FluxTransformer2DModel with the built-in FLUX profile (profiles/flux.yaml), trained
    by flow matching (core/flow.py) on random 16-channel latents and random T5 / pooled CLIP states of
    FLUX.1-dev's lengths (512 text tokens); the frozen transformer in `dtype` (bf16 on a GPU), LoRA in fp32."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..config import RunConfig
    from ..core.flow import FlowMatching
    from ..core.inject import inject_two_branch_lora
    from ..core.prompts import Embedded, EmbeddedTriple
    from ..core.train import Trainer, build_optimizer
    from ..models.families import FLUX
    from ..models.profiles import load_profile

    config = RunConfig().with_overrides({"lora.rank": rank, "train.resolution": resolution,
                                         "train.gradient_checkpointing": checkpointing})
    transformer.requires_grad_(False)
    transformer.to(device, dtype)
    lora = inject_two_branch_lora(transformer, load_profile("flux"), rank, config.lora.init, config.train.seed)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    # FLUX.1-dev's scheduler: shift 3 (its scheduler_config.json)
    pipe = SimpleNamespace(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    generator = torch.Generator().manual_seed(0)
    c = transformer.config
    embeds = EmbeddedTriple(*(Embedded(torch.randn(1, text_tokens, c.joint_attention_dim, generator=generator).to(device),
                                       torch.randn(1, c.pooled_projection_dim, generator=generator).to(device))
                              for _ in range(3)))
    objective = FlowMatching(pipe, FLUX)
    return Trainer(config, pipe, lora, RandomLatents(resolution, channels=c.in_channels // 4), embeds, device, dtype,
                   build_optimizer(config, lora), objective.scheduler, generator,
                   torch.amp.GradScaler(device.type, enabled=False), family=FLUX, objective=objective)


def peft_step_fn(unet, resolution: int, rank: int, same_optimizer: bool = True, dtype: torch.dtype = torch.float32):
    """One plain PEFT LoRA step on the same targets and rank, with SDXL-shaped data: the baseline
    (with our optimiser, or torch's default AdamW: see `peft_baseline_step`), on `unet`'s device."""
    from .speed import peft_baseline_step

    embeds = _random_embeds(unet, torch.Generator().manual_seed(0))
    return peft_baseline_step(unet.to(dtype=dtype), RandomLatents(resolution), embeds, rank, _noise_scheduler(),
                              same_optimizer, dtype)


def parameter_counts(trainer) -> dict[str, int]:
    """Base UNet, each branch's A/B matrices, mergers, and AdamW state (two moments per trainable value)."""
    lora = trainer.lora
    branch = {b.value: sum(layer.down(b).numel() + layer.up(b).numel() for layer in lora.layers.values())
              for b in BRANCHES}
    mergers = sum(p.numel() for p in lora.merger_parameters())
    ours = {id(p) for p in lora.lora_parameters() + lora.merger_parameters()}
    base = sum(p.numel() for p in trainer.unet.parameters() if id(p) not in ours)  # the UNet or FLUX transformer
    return {"unet_base": base, "content_branch": branch["content"], "style_branch": branch["style"],
            "mergers": mergers, "optimizer_state": 2 * (branch["content"] + branch["style"] + mergers)}


def branch_parameters(unet_config: dict, rank: int) -> dict[str, int]:
    """Parameters of the denoiser (a UNet, or FLUX's transformer for its config) and of ONE UnZipLoRA
    branch of `rank` on every projection it trains (A: rank x in, B: out x rank per projection;
    mergers: out), counted on the meta device. The "unet" key holds the denoiser's count."""
    import diffusers
    from accelerate import init_empty_weights

    from ..core.inject import projection_layers

    with init_empty_weights():
        unet = getattr(diffusers, unet_config.get("_class_name", "UNet2DConditionModel")).from_config(unet_config)
    branch = mergers = 0
    for _, layer in projection_layers(unet):
        branch += rank * (layer.in_features + layer.out_features)
        mergers += layer.out_features
    return {"unet": sum(p.numel() for p in unet.parameters()), "branch": branch, "mergers_per_branch": mergers}


def run_child(method: str, resolution: int, checkpointing: bool, rank: int, repeats: int) -> dict:
    """One configuration, measured in this process (called in a child by `run_memory`)."""
    t0 = time.perf_counter()
    unet = sdxl_unet()
    build_s = time.perf_counter() - t0
    if method == "unziplora":
        trainer = sdxl_trainer(unet, resolution, rank, checkpointing)
        trainer.train_step()  # step 0 refreshes the masks (no merger training, no L_orth)
        trainer.train_step()  # first with merger training and L_orth (their grads and AdamW state): warm-up too
        step, counts = trainer.train_step, parameter_counts(trainer)
    else:
        if checkpointing:
            unet.enable_gradient_checkpointing()
        step, counts = peft_step_fn(unet, resolution, rank, same_optimizer=method == "peft"), {}
        step()  # warm-up, as the refresh step is for ours: optimiser state exists from here on
    before = rss_mb("VmRSS")
    exact_peak = reset_peak_rss()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"method": method, "resolution": resolution, "gradient_checkpointing": checkpointing, "rank": rank,
            "build_s": round(build_s, 1), "rss_before_step_mb": round(before, 1),
            "peak_mb": round(rss_mb("VmHWM"), 1), "peak_is_step_only": exact_peak,
            "step_s": [round(x, 3) for x in times], "step_median_s": round(statistics.median(times), 3),
            "parameters": counts}


def _spawn(method: str, resolution: int, checkpointing: bool, rank: int, repeats: int, limit_gb: float,
           threads: int) -> dict:
    cmd = [sys.executable, "-m", "unziplora.bench.memory", method, str(resolution), str(int(checkpointing)),
           str(rank), str(repeats), str(limit_gb), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    oom = proc.returncode in (-9, 137) or "memory" in tail.lower()
    return {"method": method, "resolution": resolution, "gradient_checkpointing": checkpointing, "rank": rank,
            "error": "out of memory (address-space limit)" if oom else tail}


RATIO_METHODS = ("unziplora", "peft", "peft-default-adamw")


def interleaved_step_runs(resolution: int, rank: int, repeats: int, rounds: int, limit_gb: float, threads: int,
                          spawn=None) -> tuple[dict[str, dict], list[float | None]]:
    """Step times of each method in `rounds` turns of fresh child processes (a, b, c, a, b, c, ...),
    `repeats` steps each: a slow spell of a shared machine then hits every method, not only
    whichever ran during it. Returns the merged rows (median over all steps) and ours/PEFT per round."""
    spawn = spawn or _spawn
    turns = [{m: spawn(m, resolution, False, rank, repeats, limit_gb, threads) for m in RATIO_METHODS}
             for _ in range(rounds)]
    merged = {}
    for m in RATIO_METHODS:
        rows = [turn[m] for turn in turns]
        failed = next((r for r in rows if "error" in r), None)
        times = [t for r in rows for t in r.get("step_s", [])]
        merged[m] = failed or {**rows[0], "step_s": times, "step_median_s": round(statistics.median(times), 3),
                               "rounds": rounds}
    return merged, [_ratio(turn["unziplora"], turn["peft"]) for turn in turns]


def run_memory(json_path: str | Path | None, resolutions=(256, 512), rank: int = 64, ratio_resolution: int = 128,
               repeats: int = 2, limit_gb: float | None = None, threads: int = 1, rounds: int = 3) -> dict:
    """Peak memory per (resolution, checkpointing), parameter counts, and the SDXL step-time ratio."""
    if limit_gb is None:  # leave the rest of the machine alone
        limit_gb = round(0.85 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    rows = [_spawn("unziplora", r, gc, rank, 1, limit_gb, threads) for r in resolutions for gc in (False, True)]
    runs, per_round = interleaved_step_runs(ratio_resolution, rank, repeats, rounds, limit_gb, threads)
    ours, peft, peft_default = (runs[m] for m in RATIO_METHODS)
    ratio, ratio_default = (_ratio(ours, baseline) for baseline in (peft, peft_default))
    counts = next((r["parameters"] for r in rows + [ours] if r.get("parameters")), {})
    result = {
        "architecture": "SDXL UNet2DConditionModel (sdxl_unet_config), random weights, fp32, CPU",
        "threads": threads, "address_space_limit_gb": limit_gb, "rank": rank,
        "sdxl_train_peak_mb": {f"{r['resolution']}px_{'gc' if r['gradient_checkpointing'] else 'no_gc'}":
                               r.get("peak_mb", r.get("error")) for r in rows},
        "parameters": counts,
        "train_step_ratio_sdxl": ratio,
        "train_step_ratio_sdxl_vs_default_adamw": ratio_default,
        "train_step_ratio_sdxl_per_round": per_round,
        "ratio_runs": {"unziplora": ours, "peft_lora": peft, "peft_lora_default_adamw": peft_default},
        "runs": rows,
    }
    table = _table(rows, counts, (ratio, ratio_default, per_round), ratio_resolution, rank, repeats * rounds)
    print(table)
    write_report(json_path, result, table)
    return result


def _ratio(ours: dict, baseline: dict) -> float | None:
    if "error" in ours or "error" in baseline:
        return None
    return round(ours["step_median_s"] / baseline["step_median_s"], 3)


def _table(rows: list[dict], counts: dict, ratios, ratio_resolution: int, rank: int, repeats: int) -> str:
    lines = ["| resolution | grad checkpointing | RSS before step MB | peak MB | step s |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['resolution']} | {r['gradient_checkpointing']} | - | {r['error']} | - |")
        else:
            lines.append(f"| {r['resolution']} | {r['gradient_checkpointing']} | {r['rss_before_step_mb']:.0f} "
                         f"| {r['peak_mb']:.0f} | {r['step_median_s']:.1f} |")
    if counts:
        lines += ["", "| parameters | count | fp32 MB |", "|---|---|---|"]
        lines += [f"| {name} | {n:,} | {4 * n / MB:.1f} |" for name, n in counts.items()]
    lines += ["", f"train_step_ratio_sdxl ({ratio_resolution} px, rank {rank}, median of {repeats} steps in "
                  f"interleaved processes): {ratios[0]} (per round: {ratios[2]})",
              f"train_step_ratio_sdxl_vs_default_adamw (PEFT baseline with torch's default AdamW): {ratios[1]}"]
    return "\n".join(lines)


def _child_main(argv: list[str]) -> None:
    method, resolution, gc, rank, repeats, limit_gb, threads = argv
    limit = int(float(limit_gb) * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(int(threads))
    print(json.dumps(run_child(method, int(resolution), gc == "1", int(rank), int(repeats))), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
