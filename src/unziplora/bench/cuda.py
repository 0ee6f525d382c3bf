"""`unziplora bench memory --device cuda` and `scripts/gpu-check.sh`: the full-size SDXL UNet on a GPU.

Step time and peak CUDA memory of one UnZipLoRA training step at the paper's 1024 px with the
frozen UNet in fp16 (LoRA and mergers in fp32, loss scaling) and gradient checkpointing on and
off, and with the UNet under `torch.compile` (checkpointing off; the first steps, which compile,
are the warm-up and timed apart), against one plain PEFT LoRA step of the same rank on the same
targets in the same process (`train_step_ratio_sdxl_cuda`), and what the paper's 600 steps
(arXiv 2412.04465, Sec. 4; docs/method.md §6) take at the median step time. Random weights change
neither memory nor time. The goals (<= 12 GB, 600 steps <= 5 minutes on an H100) are printed
beside the numbers. Then FLUX.1: the full-size FLUX.1-dev transformer architecture (random weights,
frozen in bf16, 1024 px, 512 T5 tokens) trained a few UnZipLoRA steps by flow matching, with
gradient checkpointing on and off: step time and peak memory (skipped, with the reason, where the
card has too little free memory for its 24 GB of weights). `python -m unziplora.bench.cuda --dry-run`
runs the same path on the CPU with a small UNet of SDXL's topology and a small transformer of
FLUX.1's, in seconds (the test suite does).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch

from ..errors import UnZipLoRAError
from . import write_report
from .memory import _ratio, flux_trainer, parameter_counts, peft_step_fn, sdxl_trainer, sdxl_unet

FLUX_NEED_GB = 32.0  # free GPU memory the FLUX rows need: 24 GB of bf16 weights, LoRA, optimiser, activations
GOAL_PEAK_GB = 12.0
GOAL_600_STEPS_MIN = 5.0
PAPER_STEPS = 600


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_steps(step, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median/min/max seconds of `repeats` calls of `step` after `warmup`, and the peak device memory
    of the timed calls (weights included: what the card must hold); CPU rows carry no peak."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    row = {"step_s": [round(x, 4) for x in times], "step_median_s": round(statistics.median(times), 4)}
    if device.type == "cuda":
        row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2)
    row["600_steps_min"] = round(PAPER_STEPS * row["step_median_s"] / 60, 2)
    return row


EAGER = ((True, False), (False, False))  # (gradient checkpointing, compiled)
COMPILED = ((False, True),)


def _method_rows(method: str, unet, resolution: int, rank: int, device, dtype, warmup: int, repeats: int,
                 settings=EAGER):
    """Rows of one method in each (checkpointing, compiled) setting, on one UNet (the LoRA is injected once)."""
    counts = {}
    if method == "unziplora":
        trainer = sdxl_trainer(unet, resolution, rank, True, device=device, dtype=dtype)
        step, counts = trainer.train_step, parameter_counts(trainer)
        warmup = max(warmup, 2)  # step 0 refreshes the masks; merger training and L_orth start at step 1
    else:
        unet.enable_gradient_checkpointing()
        step = peft_step_fn(unet, resolution, rank, dtype=dtype)
    rows = []
    for checkpointing, compiled in settings:
        if not checkpointing:
            unet.disable_gradient_checkpointing()
        row = {"method": method, "resolution": resolution, "gradient_checkpointing": checkpointing,
               "compiled": compiled}
        try:
            if compiled:
                unet.compile()  # nn.Module.compile: the module's forward under torch.compile, in place
                t0 = time.perf_counter()
                step()
                _sync(device)
                row["first_compiled_step_s"] = round(time.perf_counter() - t0, 2)
            row.update(time_steps(step, device, warmup, repeats))
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
        except Exception as exc:  # a compiler failure is a finding of this check, not its end
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
        _free(device)
    return rows, counts


def flux_transformer():
    from diffusers import FluxTransformer2DModel

    from ..models.architectures import flux_transformer_config

    return FluxTransformer2DModel.from_config(flux_transformer_config())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build modules in `dtype` (FLUX.1's 12 billion weights never exist in fp32 on the card)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def flux_rows(factory=flux_transformer, resolution: int = 1024, rank: int = 64, device: str = "cuda",
              dtype: torch.dtype = torch.bfloat16, warmup: int = 2, repeats: int = 3, text_tokens: int = 512,
              need_gb: float = FLUX_NEED_GB) -> tuple[list[dict], dict]:
    """UnZipLoRA on the FLUX transformer `factory` builds, with gradient checkpointing on and off: a few
    flow-matching steps each (the first `warmup`, which refresh the masks, untimed). Where the card has
    less than `need_gb` free, the rows say so and nothing is built."""
    device = torch.device(device)
    settings = (True, False)
    head = [{"method": "unziplora", "model": "flux", "resolution": resolution, "gradient_checkpointing": gc,
             "compiled": False, "dtype": str(dtype).replace("torch.", "")} for gc in settings]
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] / 1e9
        if free < need_gb:
            return [{**row, "skipped": f"needs about {need_gb:.0f} GB of free GPU memory, {free:.0f} GB free"}
                    for row in head], {}
    t0 = time.perf_counter()
    with device, _default_dtype(dtype):
        transformer = factory()
    build_s = round(time.perf_counter() - t0, 1)
    rows, counts = [], {}
    try:
        trainer = flux_trainer(transformer, resolution, rank, True, text_tokens, device, dtype)
        counts = parameter_counts(trainer)
        for row, checkpointing in zip(head, settings):
            if not checkpointing:
                transformer.disable_gradient_checkpointing()
            row = {**row, "build_s": build_s}
            try:
                row.update(time_steps(trainer.train_step, device, max(warmup, 2), repeats))
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
            _free(device)
    except torch.OutOfMemoryError:
        rows = [{**row, "error": "out of memory (building the trainer)"} for row in head]
    finally:
        del transformer
        _free(device)
    return rows, counts


def run_cuda(json_path: str | Path | None, resolutions=(1024,), rank: int = 64, repeats: int = 5,
             warmup: int = 2, device: str = "cuda", dtype: torch.dtype = torch.float16, unet_factory=sdxl_unet,
             compile_unet: bool = False, flux: dict | None = None) -> dict:
    """Rows per (method, resolution, checkpointing, compiled); the ratio ours / PEFT per setting. The
    compiled rows come last, and the report is written after every method's rows: a time limit
    that ends the run during compilation keeps what was measured. `flux`: `flux_rows`' arguments (beside
    device and rank), measured after the eager SDXL rows; None: no FLUX rows."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnZipLoRAError("bench memory --device cuda needs a CUDA GPU and a CUDA build of torch; "
                             "on this machine use --device cpu")
    rows, counts, flux_result = [], {}, None
    for settings in (EAGER, COMPILED) if compile_unet else (EAGER,):
        for resolution in resolutions:
            for method in ("unziplora", "peft"):
                t0 = time.perf_counter()
                with device:  # random initialisation on the GPU: seconds instead of minutes on the host
                    unet = unet_factory()
                build_s = round(time.perf_counter() - t0, 1)
                new_rows, new_counts = _method_rows(method, unet, resolution, rank, device, dtype, warmup, repeats,
                                                    settings)
                rows += [{**row, "build_s": build_s} for row in new_rows]
                counts = counts or new_counts
                del unet
                _free(device)
                result = _result(rows, counts, device, dtype, rank, repeats, flux_result)
                write_report(json_path, result, _table(result))
        if settings is EAGER and flux is not None:
            flux_result = flux_rows(device=str(device), rank=rank, **flux)
            result = _result(rows, counts, device, dtype, rank, repeats, flux_result)
            write_report(json_path, result, _table(result))
    print(_table(result))
    return result


def _result(rows: list[dict], counts: dict, device, dtype, rank: int, repeats: int, flux=None) -> dict:
    by_setting = {(r["method"], r["resolution"], r["gradient_checkpointing"], r["compiled"]): r for r in rows}
    ratios = {f"{res}px_{'gc' if gc else 'no_gc'}{'_compiled' if comp else ''}": _ratio(row, by_setting[("peft", res, gc, comp)])
              for (method, res, gc, comp), row in by_setting.items()
              if method == "unziplora" and ("peft", res, gc, comp) in by_setting}
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).replace("torch.", ""), "rank": rank, "repeats": repeats, "torch": torch.__version__,
            "goals": {"peak_gb": GOAL_PEAK_GB, "600_steps_min": GOAL_600_STEPS_MIN},
            "train_step_ratio_sdxl_cuda": ratios, "parameters": counts, "runs": rows,
            **({"flux_runs": flux[0], "flux_parameters": flux[1]} if flux else {})}


def _table(result: dict) -> str:
    lines = [f"SDXL UNet architecture, random weights, {result['device']}, frozen weights {result['dtype']}, "
             f"rank {result['rank']}, median of {result['repeats']} steps",
             "| method | resolution | grad checkpointing | compiled | step s (min-max) | peak allocated GB | 600 steps min |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        head = f"| {r['method']} | {r['resolution']} | {r['gradient_checkpointing']} | {r.get('compiled', False)} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | - | - |")
            continue
        peak = r.get("peak_allocated_gb", "-")
        lines.append(f"{head} {r['step_median_s']:.3f} ({min(r['step_s']):.3f}-{max(r['step_s']):.3f}) | {peak} "
                     f"| {r['600_steps_min']} |")
    lines += ["", f"train_step_ratio_sdxl_cuda (ours / PEFT LoRA, same setting): {result['train_step_ratio_sdxl_cuda']}",
              f"goals: peak <= {GOAL_PEAK_GB} GB and {PAPER_STEPS} steps <= {GOAL_600_STEPS_MIN} min "
              "(1024 px, gradient checkpointing, fp16)"]
    if result.get("flux_runs"):
        lines += ["", f"FLUX.1 transformer architecture, random weights, {result['device']}, frozen weights "
                      f"{result['flux_runs'][0]['dtype']}, rank {result['rank']}",
                  "| method | resolution | grad checkpointing | step s (min-max) | peak allocated GB | 600 steps min |",
                  "|---|---|---|---|---|---|"]
        for r in result["flux_runs"]:
            head = f"| {r['method']} | {r['resolution']} | {r['gradient_checkpointing']} |"
            if "skipped" in r or "error" in r:
                lines.append(f"{head} {r.get('skipped') or r['error']} | - | - |")
                continue
            lines.append(f"{head} {r['step_median_s']:.3f} ({min(r['step_s']):.3f}-{max(r['step_s']):.3f}) | "
                         f"{r.get('peak_allocated_gb', '-')} | {r['600_steps_min']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m unziplora.bench.cuda [--dry-run] [--json FILE]`: the GPU check (scripts/gpu-check.sh)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unziplora.bench.cuda", description=main.__doc__)
    parser.add_argument("--json", help="write the result here (and a Markdown table beside it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the same path on the CPU: a small UNet of SDXL's topology, fp32, 64 px, 2 steps")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-flux", action="store_true", help="skip the FLUX.1 transformer rows")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.dry_run:
        from diffusers import FluxTransformer2DModel, UNet2DConditionModel

        from ..models.architectures import small_flux_transformer_config, small_sdxl_unet_config

        flux = None if args.no_flux else {
            "factory": lambda: FluxTransformer2DModel.from_config(small_flux_transformer_config()),
            "resolution": 64, "dtype": torch.float32, "repeats": 2, "text_tokens": 16}
        run_cuda(args.json, resolutions=(64,), rank=4, repeats=2, warmup=2, device="cpu", dtype=torch.float32,
                 unet_factory=lambda: UNet2DConditionModel.from_config(small_sdxl_unet_config()),
                 compile_unet=not args.no_compile, flux=flux)
    else:
        run_cuda(args.json, repeats=args.repeats, compile_unet=not args.no_compile, flux=None if args.no_flux else {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
