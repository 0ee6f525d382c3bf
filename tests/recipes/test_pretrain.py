"""The base-model recipe resumes exactly (safetensors checkpoints, no pickle)."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from unziplora.errors import UnZipLoRAError
from tests.pipelines import TinySDXLSpec
from unziplora.toyworld import WORLD_WORDS
from recipes.toyworld_model.pretrain import PretrainConfig, Pretrainer

SMALL = PretrainConfig(
    vae_steps=2, vae_batch=2, unet_steps=3, batch=2, pool_size=8, warmup=1, threads=1,
    spec=TinySDXLSpec(words=tuple(WORLD_WORDS), sample_size=64),
)


def assert_same_checkpoint(a_dir, b_dir):
    """Two workdirs' checkpoints hold the same tensors, bit for bit."""
    a, b = load_file(str(a_dir / "checkpoint.safetensors")), load_file(str(b_dir / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def test_interrupted_pretraining_resumes_bitwise(tmp_path):
    straight = Pretrainer(SMALL, tmp_path / "a")
    assert straight.run(progress=False)
    interrupted = Pretrainer(SMALL, tmp_path / "b")
    assert not interrupted.run(budget_s=0, progress=False)  # stops after one step, with a checkpoint
    assert (interrupted.phase, interrupted.step) == ("vae", 1)
    resumed = Pretrainer(SMALL, tmp_path / "b")
    assert (resumed.phase, resumed.step) == ("vae", 1)
    assert resumed.run(progress=False)
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


def test_render_workers_draw_the_same_renders_and_train_the_same_weights(tmp_path):
    """Parallel rendering (the GPU recipe's) only moves the pixel work: same samples, same weights."""
    assert Pretrainer(SMALL, tmp_path / "a").run(progress=False)
    parallel = Pretrainer(dataclasses.replace(SMALL, render_workers=2), tmp_path / "b")
    assert parallel.run(progress=False)
    assert parallel.workers is None  # the pool is stopped when the run ends
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


def test_resume_in_unet_phase_reads_the_cached_latent_pool(tmp_path, monkeypatch):
    straight = Pretrainer(SMALL, tmp_path / "a")
    assert straight.run(progress=False)
    interrupted = Pretrainer(SMALL, tmp_path / "b")
    while interrupted.phase == "vae" or interrupted.step < 1:
        interrupted.run(budget_s=0, progress=False)
    assert (tmp_path / "b" / "latent_pool.safetensors").is_file()
    resumed = Pretrainer(SMALL, tmp_path / "b")

    def encode_again():
        raise AssertionError("the pool was encoded again")
    monkeypatch.setattr(resumed, "_encode_pool", encode_again)
    assert resumed.run(progress=False)
    assert_same_checkpoint(tmp_path / "a", tmp_path / "b")  # the cached pool is the encoded one, bit for bit
    with torch.no_grad():  # another VAE: the cache is stale and not used
        next(resumed.c["vae"].parameters()).add_(1.0)
    assert resumed._load_pool() is None


def test_export_is_an_fp32_pipeline_stock_diffusers_runs_on_a_cpu(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w")
    trainer.run(progress=False)
    out = trainer.export(tmp_path / "model")
    from diffusers import StableDiffusionXLPipeline

    weights = load_file(str(next((out / "unet").glob("*.safetensors"))))
    assert all(t.dtype == torch.float32 for t in weights.values())
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


def test_min_snr_weights_damp_only_the_low_noise_timesteps(tmp_path):
    trainer = Pretrainer(dataclasses.replace(SMALL, snr_gamma=5.0, v_prediction=False), tmp_path / "w")
    t = torch.arange(0, 1000, 10)
    alpha_bar = trainer.noise_scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weights = trainer.loss_weights(t)
    assert torch.allclose(weights[snr <= 5], torch.ones(int((snr <= 5).sum())))
    assert (weights[snr > 5] < 1).all() and (snr > 5).any() and (snr <= 5).any()
    assert torch.allclose(weights[snr > 5], 5 / snr[snr > 5])
    assert torch.equal(Pretrainer(dataclasses.replace(SMALL, v_prediction=False), tmp_path / "plain").loss_weights(t),
                       torch.ones(len(t)))


def test_v_prediction_trains_on_velocity_and_exports_a_matching_scheduler(tmp_path):
    config = dataclasses.replace(SMALL, vae_steps=1, unet_steps=1, v_prediction=True)
    trainer = Pretrainer(config, tmp_path / "w")
    assert trainer.noise_scheduler.alphas_cumprod[-1] < 1e-6  # zero terminal SNR (up to the rescale's epsilon)
    velocity, calls = trainer.noise_scheduler.get_velocity, []
    trainer.noise_scheduler.get_velocity = lambda *a: calls.append(a) or velocity(*a)
    trainer.run(progress=False)
    assert len(calls) == 1  # the one UNet step's target
    out = trainer.export(tmp_path / "model")
    from diffusers import StableDiffusionXLPipeline

    scheduler = StableDiffusionXLPipeline.from_pretrained(str(out)).scheduler.config
    assert (scheduler.prediction_type, scheduler.rescale_betas_zero_snr, scheduler.timestep_spacing) == (
        "v_prediction", True, "trailing")
    eps = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1, v_prediction=False), tmp_path / "eps")
    assert eps.noise_scheduler.alphas_cumprod[-1] > 1e-3 and eps.c["scheduler"].config.prediction_type == "epsilon"


def test_resuming_with_another_model_shape_is_one_clear_error(tmp_path):

    Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w").run(progress=False)
    other = dataclasses.replace(SMALL.spec, latent_channels=8)
    with pytest.raises(UnZipLoRAError, match="another model shape \\(latent_channels\\)"):
        Pretrainer(dataclasses.replace(SMALL, spec=other), tmp_path / "w")
    assert Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w").phase == "unet"


def test_a_vae_only_run_stops_after_the_vae(tmp_path):
    trainer = Pretrainer(SMALL, tmp_path / "w")
    assert trainer.run(progress=False, vae_only=True)
    assert (trainer.phase, trainer.step) == ("unet", 0)  # the VAE is done, no UNet step taken
    assert not (tmp_path / "w" / "latent_pool.safetensors").exists()  # nor the UNet's pool encoded


def test_starting_from_a_model_keeps_its_weights_and_the_shared_tokens_rows(tmp_path):
    first = Pretrainer(dataclasses.replace(SMALL, vae_steps=1, unet_steps=1), tmp_path / "w")
    first.run(progress=False)
    model = first.export(tmp_path / "model")
    words = tuple(WORLD_WORDS[:-1]) + ("newword",)  # another vocabulary: one word replaced
    config = dataclasses.replace(SMALL, from_model=str(model), spec=dataclasses.replace(SMALL.spec, words=words))
    second = Pretrainer(config, tmp_path / "w2")
    assert (second.phase, second.step) == ("unet", 0)  # the VAE phase is skipped
    from diffusers import StableDiffusionXLPipeline

    old = StableDiffusionXLPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    assert torch.equal(second.c["unet"].conv_in.weight, old.unet.conv_in.weight)
    rows = second.c["text_encoder"].get_input_embeddings().weight
    old_rows = old.text_encoder.get_input_embeddings().weight
    new_vocab, old_vocab = second.c["tokenizer"].get_vocab(), old.tokenizer.get_vocab()
    shared = WORLD_WORDS[0] + "</w>"
    assert torch.equal(rows[new_vocab[shared]], old_rows[old_vocab[shared]])
    assert "newword</w>" in new_vocab and "newword</w>" not in old_vocab
    assert not second.c["vae"].encoder.conv_in.weight.requires_grad
    assert second.run(progress=False) and second.step == SMALL.unet_steps
    with pytest.raises(UnZipLoRAError, match="not a diffusers pipeline folder"):
        Pretrainer(dataclasses.replace(SMALL, from_model=str(tmp_path)), tmp_path / "w3")
