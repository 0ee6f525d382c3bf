"""scripts/gpu-check.sh runs its whole path on the CPU in dry-run mode (a small UNet of SDXL's topology,
a small transformer of FLUX.1's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_dry_run_measures_both_methods_and_writes_its_report(tmp_path):
    out = tmp_path / "cuda.json"
    env = {**os.environ, "GPU_CHECK_JSON": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--no-compile"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    settings = {(r["method"], r["gradient_checkpointing"], r["compiled"]) for r in report["runs"]}
    assert settings == {(m, gc, False) for m in ("unziplora", "peft") for gc in (True, False)}
    assert all(r["step_median_s"] > 0 and "error" not in r for r in report["runs"])
    assert set(report["train_step_ratio_sdxl_cuda"]) == {"64px_gc", "64px_no_gc"}
    assert report["parameters"]["content_branch"] == report["parameters"]["style_branch"] > 0
    assert out.with_suffix(".md").read_text().startswith("SDXL UNet architecture")
    flux = report["flux_runs"]  # FLUX.1's 19 + 38 blocks at width 16, flow matching, checkpointing on and off
    assert [r["gradient_checkpointing"] for r in flux] == [True, False]
    assert all(r["model"] == "flux" and r["step_median_s"] > 0 and "error" not in r for r in flux)
    assert report["flux_parameters"]["content_branch"] == report["flux_parameters"]["style_branch"] > 0
    assert "FLUX.1 transformer architecture" in out.with_suffix(".md").read_text()


def test_the_flux_rows_are_skipped_with_the_reason_where_gpu_memory_is_short(monkeypatch):
    import torch

    from unziplora.bench import cuda

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 10**9, 80 * 10**9))
    built = []
    rows, counts = cuda.flux_rows(factory=lambda: built.append(1), device="cuda")
    assert not built and counts == {}
    assert [r["gradient_checkpointing"] for r in rows] == [True, False]
    assert all(r["skipped"] == "needs about 32 GB of free GPU memory, 8 GB free" for r in rows)
    table = cuda._table({**cuda._result([], {}, torch.device("cpu"), torch.float16, 64, 3, (rows, counts))})
    assert "needs about 32 GB of free GPU memory" in table


def test_without_a_gpu_the_real_check_says_how_to_run_the_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
