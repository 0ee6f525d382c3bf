"""The base-model recipe resumes exactly (safetensors checkpoints, no pickle)."""

import dataclasses

import torch
from safetensors.torch import load_file

from unziplora.tiny import TinySDXLSpec
from unziplora.toyworld import WORLD_WORDS
from unziplora.toyworld.pretrain import PretrainConfig, Pretrainer

SMALL = PretrainConfig(
    vae_steps=2, vae_batch=2, unet_steps=3, batch=2, pool_size=8, warmup=1, threads=1,
    spec=TinySDXLSpec(words=tuple(WORLD_WORDS), sample_size=64),
)


def test_interrupted_pretraining_resumes_bitwise(tmp_path):
    straight = Pretrainer(SMALL, tmp_path / "a")
    assert straight.run(progress=False)
    interrupted = Pretrainer(SMALL, tmp_path / "b")
    assert not interrupted.run(budget_s=0, progress=False)  # stops after one step, with a checkpoint
    assert (interrupted.phase, interrupted.step) == ("vae", 1)
    resumed = Pretrainer(SMALL, tmp_path / "b")
    assert (resumed.phase, resumed.step) == ("vae", 1)
    assert resumed.run(progress=False)
    a, b = load_file(str(tmp_path / "a" / "checkpoint.safetensors")), load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_export_is_an_fp16_pipeline(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w")
    trainer.run(progress=False)
    out = trainer.export(tmp_path / "model")
    from diffusers import StableDiffusionXLPipeline

    weights = load_file(str(next((out / "unet").glob("*.safetensors"))))
    assert all(t.dtype == torch.float16 for t in weights.values())
    assert not list(out.rglob("*.bin"))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))  # loads through the user's path
    assert pipe.unet.config.sample_size == 32


def test_extending_a_finished_run_is_recorded_in_the_recipe(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w")
    trainer.run(progress=False)
    longer = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=2), tmp_path / "w")
    assert longer.run(progress=False) and longer.step == 2
    out = longer.export(tmp_path / "model")
    import json

    trained = json.loads((out / "recipe.json").read_text())["trained"]
    assert trained["schedule_changes_on_resume"] == [{"resumed_at": ["unet", 1], "unet_steps": [1, 2]}]


def test_exporting_with_another_config_does_not_rewrite_the_recipe(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=2), tmp_path / "w")
    trainer.run(progress=False)
    exporter = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=7), tmp_path / "w")  # export only
    out = exporter.export(tmp_path / "model")
    import json

    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["config"]["unet_steps"] == 2  # what trained the weights, not the exporter's defaults
    assert recipe["trained"]["schedule_changes_on_resume"] == []
