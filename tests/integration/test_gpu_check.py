"""scripts/gpu-check.sh runs its whole path on the CPU in dry-run mode (a small UNet of SDXL's topology)."""

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


def test_without_a_gpu_the_real_check_says_how_to_run_the_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
