"""Settings follow the base model: paper < method < model folder < config file < explicit values."""

from pathlib import Path

import pytest

from unziplora.errors import UnZipLoRAError
from unziplora.methods import resolve_config
from unziplora.models.base import MODEL_DEFAULTS_FILE, BaseModel
from tests.pipelines import TinySDXLSpec, save_tiny_sdxl_pipeline


@pytest.fixture()
def model(tmp_path):
    folder = save_tiny_sdxl_pipeline(tmp_path / "model", TinySDXLSpec(block_out_channels=(8, 16, 16),
                                                                      attention_head_dim=(2, 2, 2)))
    (folder / MODEL_DEFAULTS_FILE).write_text("train: {resolution: 64}\nlora: {rank: 16, lr: 1.0e-3}\n"
                                              "sample: {steps: 30, guidance_rescale: 0.7}\n")
    return folder


def test_the_paper_defaults_without_a_model_file():
    resolved = resolve_config({"model.base_model": "stabilityai/stable-diffusion-xl-base-1.0"})
    assert (resolved.config.train.resolution, resolved.config.lora.rank) == (1024, 64)
    assert resolved.sources == {}  # a hub id, kept as an id, is the paper's default


def test_a_model_folder_declares_its_defaults_and_explicit_values_win(model, tmp_path):
    resolved = resolve_config({"model.base_model": str(model), "lora.rank": 8})
    c = resolved.config
    assert (c.train.resolution, c.lora.rank, c.lora.lr, c.sample.guidance_rescale) == (64, 8, 1e-3, 0.7)
    assert resolved.sources["train.resolution"] == "model" and resolved.sources["lora.rank"] == "given"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"model: {{base_model: {model}}}\ntrain: {{resolution: 128}}\n")
    from_file = resolve_config({}, config_file)
    assert from_file.config.train.resolution == 128 and from_file.sources["train.resolution"] == "config file"
    assert from_file.config.lora.rank == 16  # the file did not set it: the model's default stays
    assert resolve_config({"train.resolution": 32}, config_file).config.train.resolution == 32


def test_a_relative_local_model_is_stored_resolved(model, monkeypatch):
    monkeypatch.chdir(model.parent)
    resolved = resolve_config({"model.base_model": "model"})
    assert resolved.config.model.base_model == str(model.resolve()) and Path(resolved.config.model.base_model).is_absolute()
    assert BaseModel.resolve("owner/name").source == "owner/name"  # a hub id stays an id


@pytest.mark.parametrize("text, match", [
    ("prompts: {subject: cat}\n", "may only hold the sections"),
    ("lora: {rnak: 4}\n", "unknown config key 'lora.rnak'"),
    ("train: {resolution: big}\n", "train.resolution must be an integer"),
    ("train: [\n", "not valid YAML"),
])
def test_a_bad_model_defaults_file_is_one_clear_error(model, text, match):
    (model / MODEL_DEFAULTS_FILE).write_text(text)
    with pytest.raises(UnZipLoRAError, match=match):
        resolve_config({"model.base_model": str(model)})


def test_the_embedded_model_declares_its_small_settings():
    from unziplora.models.embedded import EMBEDDED_MODEL

    c = resolve_config({"model.base_model": str(EMBEDDED_MODEL)}).config
    assert (c.train.resolution, c.lora.rank) == (64, 16)
