"""The recipe's budget over resumes, its VAE gate and its learning curve."""

import dataclasses
import json

import pytest

from recipes.toyworld_model import curve
from recipes.toyworld_model.pretrain import PretrainConfig, Pretrainer
from unziplora.errors import UnZipLoRAError
from tests.pipelines import TinySDXLSpec
from unziplora.toyworld import WORLD_WORDS

SMALL = PretrainConfig(
    vae_steps=2, vae_batch=2, unet_steps=50, batch=2, pool_size=8, warmup=1, threads=1,
    spec=TinySDXLSpec(words=tuple(WORLD_WORDS), sample_size=64),
)


def test_the_total_budget_counts_over_resumes_and_stops_with_a_checkpoint(tmp_path):
    first = Pretrainer(dataclasses.replace(SMALL, budget_s=1e-9), tmp_path / "w")
    assert not first.run(progress=False)  # spent after one step
    assert first.step == 1 and first.spent_s > 0
    again = Pretrainer(dataclasses.replace(SMALL, budget_s=1e-9), tmp_path / "w")
    assert again.spent_s == pytest.approx(first.spent_s)  # kept in the checkpoint
    assert not again.run(progress=False) and again.step == 2  # one more step, then out of budget again
    assert again.spent_s > first.spent_s


def test_the_vae_check_compares_every_family_with_the_renders(tmp_path, monkeypatch):
    trainer = Pretrainer(SMALL, tmp_path / "w")
    trainer.run(progress=False, vae_only=True)
    result = curve.vae_check(trainer.c["vae"], n=24)
    assert set(result["gap"]) == set(result["renders"]["family_acc_by_family"]) | {"overall"}
    worst = max(result["gap"].values())
    assert result["passed"] == (worst <= curve.VAE_TOLERANCE)
    assert not result["passed"]  # a VAE of 2 steps draws noise: the gate must close


def test_the_unet_phase_does_not_start_on_a_vae_that_failed_its_check(tmp_path, capsys):
    trainer = Pretrainer(SMALL, tmp_path / "w")
    trainer.run(progress=False, vae_only=True)
    (tmp_path / "w" / "vae_check.json").write_text(json.dumps(
        {"passed": False, "gap": {"solid": 0.2, "overall": 0.1},
         "renders": {"family_acc": 1.0, "family_acc_by_family": {"solid": 1.0}},
         "reconstructions": {"family_acc": 0.9, "family_acc_by_family": {"solid": 0.8}}}))
    assert not curve.checked_vae(trainer)
    assert "before the UNet phase" in capsys.readouterr().err
    with pytest.raises(UnZipLoRAError, match="not finished"):
        curve.checked_vae(Pretrainer(SMALL, tmp_path / "fresh"))


def test_the_learning_curve_appends_a_point_per_interval_of_training(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(curve, "quick_r1", lambda trainer: calls.append(trainer.step) or {
        "images": 48, "class_acc": 0.5, "family_acc": 0.25, "family_acc_by_family": {"solid": 0.25}})
    trainer = Pretrainer(dataclasses.replace(SMALL, unet_steps=4), tmp_path / "w")
    path = tmp_path / "w" / "curve.jsonl"
    trainer.on_step = curve.LearningCurve(path, every_s=0.0)
    assert trainer.run(progress=False)
    points = [json.loads(line) for line in path.read_text().splitlines()]
    assert [p["step"] for p in points] == calls == [1, 2, 3, 4]  # UNet steps only, not the VAE's
    assert all(p["family_acc"] == 0.25 and p["spent_s"] > 0 for p in points)
    resumed = curve.LearningCurve(path, every_s=3600.0)
    assert resumed.last_s == points[-1]["spent_s"]  # a resumed run continues the schedule


def test_quick_r1_names_one_sample_of_every_seen_combo(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, unet_steps=1), tmp_path / "w")
    trainer.run(progress=False)
    before = {k: v.clone() for k, v in trainer.c["unet"].state_dict().items()}
    result = curve.quick_r1(trainer, steps=2)
    assert result["images"] == 48 and 0 <= result["family_acc"] <= 1
    after = trainer.c["unet"].state_dict()
    assert all((before[k] == after[k]).all() for k in before)  # the EMA copy leaves training untouched
