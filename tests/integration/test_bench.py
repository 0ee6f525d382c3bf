"""The speed benchmark runs end to end and reports every key (timings are not asserted)."""

import json

from unziplora.bench.speed import run_speed


def test_speed_benchmark_reports_ratios(tiny_base, tiny_image, tmp_path):
    result = run_speed(tmp_path / "speed.json", str(tiny_base), tiny_image, rank=2, resolution=32, steps=2, repeats=1)
    saved = json.loads((tmp_path / "speed.json").read_text())
    for key in ("train_step_ratio", "train_step_ratio_vs_default_adamw", "combined_inference_ratio",
                "fused_inference_ratio"):
        assert saved[key] == result[key] and saved[key] > 0
    assert set(saved["timings_s"]) == {"unziplora_step", "peft_lora_step", "peft_lora_step_default_adamw", "generate_base",
                                       "generate_combined", "generate_content_fused"}
