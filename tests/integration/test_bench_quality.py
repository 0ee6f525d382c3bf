"""The quality benchmark runs every row end to end and writes the promised JSON shape."""

from unziplora.models.base import BaseModel
import json

from unziplora.bench.quality import METRICS, run_quality


def test_quality_benchmark_shape(tiny_base, tmp_path, monkeypatch):
    # the tiny pipeline renders 32 px by default; the benchmark asks for 64 px, which it also handles
    report = run_quality(tmp_path / "q.json", BaseModel.resolve(tiny_base), tmp_path / "work", n_images=2, seeds=1, steps=2,
                         rank=2, sample_steps=1, methods=("unziplora", "b-lora"))
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["images"] == 2 and saved["seeds"] == 1
    assert set(saved["methods"]) == {"unziplora", "b-lora", "ceiling", "floor"}
    for name in ("unziplora", "b-lora", "floor"):
        assert set(METRICS) <= set(saved["methods"][name]), name
        assert all(0 <= saved["methods"][name][m]["mean"] <= 1 for m in METRICS)
    assert saved["methods"]["unziplora"]["peak_rss_mb"] > 0
    assert (tmp_path / "q.md").read_text().startswith("| method |")
    assert sorted(p.name for p in (tmp_path / "work").glob("grid_img*.png")) == ["grid_img00.png", "grid_img01.png"]
    assert report["methods"]["ceiling"]["subject_alignment"]["mean"] > 0.5


def test_a_method_that_cannot_run_on_the_base_model_is_a_skipped_row(tiny_base, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    (base / "unziplora_profile.yaml").write_text(
        "name: content-only\ndefault: {content: masked, style: masked}\n"
        "modules:\n- {prefix: up_blocks.0.attentions.0, content: all, style: masked}\n")
    report = run_quality(None, BaseModel.resolve(base), tmp_path / "work", n_images=2, seeds=1, steps=2, rank=2,
                         sample_steps=1, methods=("unziplora", "b-lora", "b-lora-sdxl-blocks"))
    assert "no content or no style modules" in report["methods"]["b-lora"]["skipped"]
    assert set(METRICS) <= set(report["methods"]["unziplora"])
    # the variant row runs B-LoRA on SDXL's profile blocks instead
    assert set(METRICS) <= set(report["methods"]["b-lora-sdxl-blocks"])
    manifest = json.loads((tmp_path / "work" / "b-lora-sdxl-blocks" / "img00" / "manifest.json").read_text())
    assert manifest["method"] == "b-lora" and manifest["profile"]["name"] == "sdxl"


def test_resume_reuses_finished_runs_and_scores_and_retrains_when_settings_change(tiny_base, tmp_path, monkeypatch):
    import unziplora.bench.quality as quality

    args = dict(json_path=None, base=BaseModel.resolve(tiny_base), workdir=tmp_path / "work", n_images=2, seeds=1, steps=2,
                rank=2, sample_steps=1, methods=("unziplora",), resume=True)
    first = run_quality(**args)
    trained, scored = [], []
    real_train, real_score = quality._train, quality.score_run
    monkeypatch.setattr(quality, "_train", lambda *a: trained.append(a[1].method.value) or real_train(*a))
    monkeypatch.setattr(quality, "score_run", lambda *a: scored.append(a[0]) or real_score(*a))
    again = run_quality(**args)
    assert trained == [] and scored == []
    assert again["methods"]["unziplora"] == first["methods"]["unziplora"]
    assert len(list((tmp_path / "work").glob("grid_img*.png"))) == 2

    run_quality(**{**args, "steps": 3})  # other settings: nothing reused
    assert trained == ["unziplora", "unziplora"] and len(scored) == 2
    run_quality(**{**args, "steps": 3, "resume": False})  # no --resume: everything again
    assert len(trained) == 4
