"""Training switches: gradient checkpointing, 8-bit AdamW, previews, latent caching, ablations."""

import builtins
import logging

import pytest
import torch
from safetensors.torch import load_file

from unziplora.models.base import BaseModel
from unziplora.names import Branch, Role
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.models.profiles import load_profile
from unziplora.core.prompts import training_prompts
from unziplora.core.train import Trainer, tie_note, tie_record

from ..conftest import tiny_config


def test_gradient_checkpointing_gives_the_same_result(tiny_base, tiny_image, tiny_run, tmp_path):
    config = tiny_config(tiny_base, **{"train.gradient_checkpointing": True})
    run = decompose(tiny_image, tmp_path / "ckpt", config, progress=False)
    plain, checkpointed = load_file(str(tiny_run.state_path)), load_file(str(run.state_path))
    for key in plain:
        assert torch.allclose(plain[key].float(), checkpointed[key].float(), atol=1e-5), key


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tiny_base, tiny_image, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    config = tiny_config(tiny_base, **{"train.use_8bit_adam": True})
    with pytest.raises(UnZipLoRAError, match="bitsandbytes"):
        decompose(tiny_image, tmp_path / "bnb", config, progress=False)
    assert not (tmp_path / "bnb").exists()


def test_previews_every_n_steps(tiny_base, tiny_image, tmp_path):
    config = tiny_config(tiny_base, **{"train.steps": 4, "train.preview_every": 2, "sample.seeds": [0]})
    run = decompose(tiny_image, tmp_path / "prev", config, progress=False)
    assert sorted(p.name for p in (run.path / "previews").iterdir()) == ["step_00002.png"]
    assert (run.path / "preview.png").is_file() and run.manifest.timings["preview_s"] > 0
    assert "![preview](preview.png)" in (run.path / "README.md").read_text()  # the card shows the grid


def test_no_preview_skips_the_final_grid_and_keeps_the_run_resumable(tiny_base, tiny_image, tmp_path):
    from unziplora.run.checkpoint import fingerprint

    config = tiny_config(tiny_base, **{"train.steps": 2, "train.no_preview": True})
    run = decompose(tiny_image, tmp_path / "quiet", config, progress=False)
    assert not (run.path / "preview.png").exists() and "preview" not in run.manifest.files
    assert run.manifest.timings["preview_s"] < 0.05 and (run.path / "content_lora").is_dir()
    assert "preview.png" not in (run.path / "README.md").read_text()  # no link to a picture that is not there
    base = BaseModel.resolve(tiny_base)
    with_preview = tiny_config(tiny_base, **{"train.steps": 2})
    # what is written around training, not what trains: a run resumes with or without the flag
    assert fingerprint(config, "x", base) == fingerprint(with_preview, "x", base)


def prepared_trainer(tiny_base, tiny_image, **overrides):
    config = tiny_config(tiny_base, **overrides)
    pipe = BaseModel.resolve(tiny_base).load()
    return Trainer.prepare(config, pipe, tiny_image, training_prompts(config.prompts), load_profile("sdxl"),
                           torch.device("cpu"), torch.float32)


def test_text_encoders_released_and_latents_cached_per_crop(tiny_base, tiny_image):
    trainer = prepared_trainer(tiny_base, tiny_image, **{"train.steps": 6})
    assert trainer.pipe.text_encoder is None and trainer.pipe.text_encoder_2 is None
    calls = []
    original = trainer.pipe.vae.encode
    trainer.pipe.vae.encode = lambda x: calls.append(1) or original(x)
    for _ in range(6):
        trainer.train_step()
    # 40x52 input resized to 32x41: at most 10 distinct horizontal crops, each encoded once
    assert len(calls) == trainer.latents.cached_crops <= 10


def test_refresh_steps_follow_the_schedule(tiny_base, tiny_image):
    trainer = prepared_trainer(tiny_base, tiny_image, **{"train.steps": 5, "masks.refresh_every": 2})
    logs = [trainer.train_step() for _ in range(5)]
    assert [log.refresh for log in logs] == [True, False, True, False, True]
    assert all(log.orth == 0 for log in logs if log.refresh)
    assert any(log.orth > 0 for log in logs if not log.refresh)


def test_ablation_without_column_separation_trains_all_columns(tiny_base, tiny_image):
    trainer = prepared_trainer(tiny_base, tiny_image, **{"masks.enabled": False, "train.steps": 2})
    logs = [trainer.train_step() for _ in range(2)]
    assert not any(log.refresh for log in logs)
    for layer in trainer.lora.layers.values():
        assert all(layer.effective_mask(branch).all() for branch in Branch)
    for merger in trainer.lora.merger_parameters():
        assert torch.equal(merger, torch.ones_like(merger))  # mergers stay at 1 without column separation


def test_training_time_ids_are_the_ones_generation_uses(tiny_base, tiny_image):
    """(res, res, 0, 0, res, res) for every crop of a 40x52 input, as the authors train and as
    SDXL's pipeline generates. (Was: the input's real size and each crop's offsets.)"""
    trainer = prepared_trainer(tiny_base, tiny_image, **{"train.batch_size": 3})
    kwargs = trainer.unet_kwargs(3)
    time_ids = kwargs["added_cond_kwargs"]["time_ids"]
    assert time_ids.tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 3
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    generation = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32,
                                        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert generation.tolist() == time_ids[:1].tolist()
    assert kwargs["cross_attention_kwargs"]["content_encoder_hidden_states"].shape[0] == 3
    assert torch.isfinite(torch.tensor(trainer.train_step().loss))


def test_cone_scores_use_the_loss_scale_and_ties_are_named(tiny_base, tiny_image, capsys, caplog, monkeypatch):
    """fp32 runs score at 2^16 (the authors' fp16 loss scale); ties are one log line per refresh."""
    trainer = prepared_trainer(tiny_base, tiny_image, **{"train.steps": 1})
    assert trainer.cone_grad_scale() == 2.0**16
    seen = []
    real = trainer.lora.refresh_masks
    monkeypatch.setattr(trainer.lora, "refresh_masks", lambda f, t, scale: seen.append(scale) or real(f, t, scale))
    trainer.train_step()
    assert seen == [2.0**16]
    with torch.no_grad():  # B = 0: no update, every cone score 0, every choice an index split
        for layer in trainer.lora.layers.values():
            layer.up_weight.zero_()
            layer.masks.zero_()
    trainer.step, trainer.cone_ties = 0, []
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="unziplora"):
        trainer.train_step()
    assert capsys.readouterr().err == ""  # the log (--verbose) and the manifest, not the terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "unziplora"]
    masked = sum(role is Role.MASKED for layer in trainer.lora.layers.values() for role in layer.roles.values())
    assert len(lines) == 1 and lines[0].startswith(f"step 0: {masked} layer branches tie (first: ")  # all of them
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q (content)" in lines[0]
    assert "same cone score" in lines[0]
    assert trainer.cone_ties == [(0, masked)] and tie_record(trainer)["branches"] == masked
    assert "tied in up to" in tie_note(trainer)


@pytest.fixture(scope="module")
def v_prediction_base(tmp_path_factory):
    """The tiny pipeline with a scheduler that says v_prediction."""
    import json

    from tests.pipelines import save_tiny_sdxl_pipeline

    path = save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("v-pred") / "base")
    config_file = path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return path


def test_v_prediction_trains_against_the_velocity(v_prediction_base):
    from diffusers import DDPMScheduler

    from unziplora.core.objective import diffusion_mse

    pipe = BaseModel.resolve(v_prediction_base).load()
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    assert scheduler.config.prediction_type == "v_prediction"
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))

    class Constant(torch.nn.Module):  # predicts zeros: the loss is then the target's mean square
        def forward(self, x, t, **_):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    loss = diffusion_mse(Constant(), scheduler, latents, torch.Generator().manual_seed(0), torch.float32, {})
    g = torch.Generator().manual_seed(0)  # the same draws: noise, then the timestep
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=g)
    velocity = scheduler.get_velocity(latents, noise, t)
    assert torch.allclose(loss, velocity.pow(2).mean()) and not torch.allclose(loss, noise.pow(2).mean())


def test_decompose_and_baselines_run_on_a_v_prediction_model(v_prediction_base, tiny_image, tmp_path):
    run = decompose(tiny_image, tmp_path / "v", tiny_config(v_prediction_base, **{"train.steps": 2}), progress=False)
    assert run.manifest.steps == 2
    dreambooth = decompose(tiny_image, tmp_path / "d", tiny_config(v_prediction_base, **{"train.steps": 2}),
                           method="dreambooth-lora", progress=False)
    assert dreambooth.manifest.method.value == "dreambooth-lora"


def test_an_unknown_prediction_type_is_one_clear_error(v_prediction_base, tiny_image, tmp_path):
    import json
    import shutil

    base = tmp_path / "sample-pred"
    shutil.copytree(v_prediction_base, base)
    config_file = base / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "sample"}))
    with pytest.raises(UnZipLoRAError, match="predicts 'sample'; training supports epsilon and v_prediction"):
        decompose(tiny_image, tmp_path / "x", tiny_config(base), progress=False)
    assert not (tmp_path / "x").exists()
