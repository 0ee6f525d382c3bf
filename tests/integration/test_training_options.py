"""Training switches: gradient checkpointing, 8-bit AdamW, previews, latent caching, ablations."""

import builtins

import pytest
import torch
from safetensors.torch import load_file

from unziplora.branch import Branch
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.models import load_pipeline
from unziplora.profiles import load_profile
from unziplora.prompts import training_prompts
from unziplora.train import Trainer

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


def prepared_trainer(tiny_base, tiny_image, **overrides):
    config = tiny_config(tiny_base, **overrides)
    pipe = load_pipeline(str(tiny_base))
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
    for merger in trainer.lora.parameters("merger"):
        assert torch.equal(merger, torch.ones_like(merger))  # mergers stay at 1 without column separation


def test_batches_carry_each_crops_own_time_ids(tiny_base, tiny_image):
    trainer = prepared_trainer(tiny_base, tiny_image, **{"train.batch_size": 3})
    kwargs = trainer.unet_kwargs([(0, 0), (0, 5), (0, 9)])
    time_ids = kwargs["added_cond_kwargs"]["time_ids"]
    assert time_ids.shape == (3, 6) and time_ids[:, 3].tolist() == [0.0, 5.0, 9.0]
    assert kwargs["cross_attention_kwargs"]["content_encoder_hidden_states"].shape[0] == 3
    assert torch.isfinite(torch.tensor(trainer.train_step().loss))
