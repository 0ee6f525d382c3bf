"""Config defaults, strict YAML loading, and prompt derivation."""

import pytest

from unziplora.config import RunConfig, config_from_dict, load_config
from unziplora.errors import UnZipLoRAError
from unziplora.core.prompts import expand_tags, split_prompt, training_prompts


def test_defaults_are_the_papers():
    c = RunConfig()
    assert (c.lora.rank, c.lora.lr, c.lora.merger_lr, c.lora.init) == (64, 5e-5, 5e-3, "gaussian")
    assert (c.masks.refresh_every, c.masks.fraction, c.masks.orth_weight, c.masks.cone_threshold) == (200, 0.1, 0.5, 1e-5)
    t = c.train
    assert (t.steps, t.resolution, t.batch_size, t.weight_decay, t.max_grad_norm, t.seed) == (600, 1024, 1, 1e-4, 1.0, 0)
    assert t.adam_betas == (0.9, 0.999) and t.adam_eps == 1e-8
    assert (c.sample.steps, c.sample.guidance_scale, c.sample.seeds) == (50, 5.0, [0, 1000, 111, 1234])


def test_yaml_round_trip(tmp_path):
    config = RunConfig().with_overrides({"train.steps": 7, "prompts.subject": "cat", "prompts.style": "ink"})
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"stepz": 3}}, "unknown config key train.stepz"),
        ({"trian": {}}, "unknown config section 'trian'"),
        ({"train": {"steps": 0}}, "train.steps must be a positive integer"),
        ({"train": {"steps": "many"}}, "train.steps must be an integer"),
        ({"lora": {"rank": -4}}, "lora.rank must be a positive integer"),
        ({"masks": {"fraction": 1.5}}, r"masks.fraction must be in \(0, 1\]"),
        ({"masks": {"fraction": 0}}, r"masks.fraction must be in \(0, 1\]"),
        ({"train": {"mixed_precision": "fp8"}}, "must be one of"),
        ({"train": {"gradient_checkpointing": "yes"}}, "must be true or false"),
        ({"lora": {"lr": float("nan")}}, "finite number"),
        ({"prompts": {"subject": " ", "style": "ink"}}, "subject word is empty"),
        ({"train": {"adam_betas": [0.9]}}, "must have 2 values"),
    ],
)
def test_bad_config_values_are_rejected_by_name(data, message):
    with pytest.raises(UnZipLoRAError, match=message):
        config_from_dict(data)


def test_override_of_unknown_key_is_rejected():
    with pytest.raises(UnZipLoRAError, match="unknown config key"):
        RunConfig().with_overrides({"train.nope": 1})


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed")
    with pytest.raises(UnZipLoRAError, match="not valid YAML"):
        load_config(path)


def test_training_prompts_follow_the_method():
    config = RunConfig().with_overrides({"prompts.subject": "cat", "prompts.style": "sketch"})
    triple = training_prompts(config.prompts)
    assert triple.combined == "A monadikos cat in sketch style"
    assert triple.content == "A monadikos cat"
    assert triple.style == "A cat in sketch style"
    unseparated = training_prompts(config.with_overrides({"prompts.separate": False}).prompts)
    assert unseparated.content == unseparated.style == unseparated.combined


def test_training_prompts_need_subject_and_style():
    with pytest.raises(UnZipLoRAError, match="required"):
        training_prompts(RunConfig().prompts)


def test_split_prompt_derives_three_prompts():
    triple = split_prompt("A <c> cat in <s> style in a boat", "monadikos", "sketch")
    assert triple.combined == "A monadikos cat in sketch style in a boat"
    assert triple.content == "A monadikos cat in a boat"
    assert triple.style == "A cat in sketch style in a boat"
    bare = split_prompt("<s> painting of a <c> dog", "sks", "oil")
    assert (bare.content, bare.style) == ("painting of a sks dog", "oil painting of a dog")


def test_expand_tags():
    assert expand_tags("A truck in <s> style", "monadikos", "sketch") == "A truck in sketch style"
    assert expand_tags("A  <c>   cat", "monadikos", "x") == "A monadikos cat"
