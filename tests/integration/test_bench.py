"""The speed benchmark runs end to end and reports every key (timings are not asserted)."""

import json

from unziplora.bench.speed import run_speed
from unziplora.models.base import BaseModel


def test_speed_benchmark_reports_ratios(tiny_base, tiny_image, tmp_path):
    result = run_speed(tmp_path / "speed.json", BaseModel.resolve(tiny_base), tiny_image, rank=2, resolution=32,
                       steps=2, repeats=1, train_steps=2, rounds=2)
    saved = json.loads((tmp_path / "speed.json").read_text())
    e2e = saved["decomposition"]["methods"]
    assert set(e2e) == {"unziplora", "dreambooth-lora", "b-lora-sdxl-blocks", "unziplora with its preview"}
    assert saved["decomposition"]["rounds"] == 2
    assert e2e["dreambooth-lora"]["ratio_to_dreambooth"] == 1.0 and e2e["dreambooth-lora"]["ratio_se"] == 0.0
    assert saved["decomposition_ratio"] == e2e["unziplora"]["ratio_to_dreambooth"] > 0
    for name, row in e2e.items():  # the phases of a whole decomposition are parts of it; the preview, of saving
        phases = row["phases_median_s"]
        assert set(phases) == {"load_s", "prepare_s", "train_s", "save_s", "preview_s"}
        assert sum(v for k, v in phases.items() if k != "preview_s") <= row["median_s"] * 1.05
        assert (phases["preview_s"] > 0) == (name == "unziplora with its preview")  # the compared rows draw none
        assert phases["preview_s"] <= phases["save_s"]
    for key in ("train_step_ratio", "train_step_ratio_vs_default_adamw", "train_step_ratio_vs_rank_2r",
                "combined_inference_ratio", "fused_inference_ratio"):
        assert saved[key] == result[key] and saved[key] > 0
    steps = {"ours": "unziplora_step", "peft": "peft_lora_step", "peft_default_adamw": "peft_lora_step_default_adamw",
             "peft_rank_2r": "peft_lora_step_rank_2r"}
    assert set(saved["timings_s"]) == {*steps.values(), "generate_base", "generate_combined", "generate_content_fused"}
    # one repeat: each step's phases are parts of that very step, so they add up to at most its time
    assert set(saved["train_step_phases_s"]) == set(steps)
    paired = saved["train_step_ratio_paired"]  # one turn: a mean, no standard error yet
    assert paired["mean"] > 0 and paired["se"] != paired["se"]
    for name, phases in saved["train_step_phases_s"].items():
        assert set(phases) == {"forward", "backward", "update"} and min(phases.values()) > 0
        assert sum(phases.values()) <= saved["timings_s"][steps[name]]["median"]


def test_bench_entry_point_names_what_it_does_not_know():
    import pytest

    from unziplora.bench import run_bench
    from unziplora.errors import UnZipLoRAError

    with pytest.raises(UnZipLoRAError, match="unknown benchmark .nope.; choose from base-model, quality, speed, memory"):
        run_bench("nope")
    with pytest.raises(TypeError, match="unknown options \\['iamges'\\]"):
        run_bench("speed", iamges=3)


def test_base_model_benchmark_rows_and_targets(tiny_base, tmp_path):
    from unziplora.bench.base_model import run_base_model

    report = run_base_model(tmp_path / "r1.json", BaseModel.resolve(tiny_base), per_combo=1, renders=16, steps=1)
    saved = json.loads((tmp_path / "r1.json").read_text())
    assert list(saved["rows"]) == ["renders", "vae reconstructions", "seen", "held-out"]
    assert saved["rows"]["renders"]["family_acc"] >= 0.9  # the judge knows clean renders
    assert saved["rows"]["seen"]["images"] == 48 and saved["rows"]["held-out"]["images"] == 16
    assert report["passed"] == {"seen": False, "held-out": False}  # a random tiny model draws nothing
    assert (tmp_path / "r1.md").read_text().startswith("| what | images |")


def test_quality_rows_name_the_methods():
    from unziplora.bench import QUALITY_ROWS
    from unziplora.bench.quality import VARIANTS
    from unziplora.methods import Method

    assert set(QUALITY_ROWS) == {m.value for m in Method} | set(VARIANTS)
