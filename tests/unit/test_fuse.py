"""Fused inference computes what the unfused two-branch UNet computes (allclose)."""

import copy

import pytest
import torch

from unziplora.names import Branch
from unziplora.core.fuse import fuse_for_generation
from unziplora.core.inject import inject_two_branch_lora
from unziplora.core.layer import TwoBranchLoraLinear
from unziplora.models.profiles import load_profile
from tests.pipelines import tiny_sdxl_components

from .test_attention import randomize, unet_inputs


@pytest.fixture(scope="module")
def unet_with_lora():
    unet = tiny_sdxl_components(seed=0)["unet"].eval()
    lora = inject_two_branch_lora(unet, load_profile("sdxl"), rank=4)
    randomize(lora, seed=3)
    return unet


def run(unet, inputs, **kwargs):
    with torch.no_grad():
        return unet(**inputs, **kwargs).sample


def test_fused_combined_matches_separated(unet_with_lora):
    inputs = unet_inputs(seed=1)
    g = torch.Generator().manual_seed(2)
    content, style = torch.randn(2, 77, 64, generator=g), torch.randn(2, 77, 64, generator=g)
    kwargs = {"content_encoder_hidden_states": content, "style_encoder_hidden_states": style}
    reference = run(unet_with_lora, inputs, cross_attention_kwargs=kwargs)
    fused = copy.deepcopy(unet_with_lora)
    fuse_for_generation(fused, inputs["encoder_hidden_states"], content, style)
    for step_seed in (1, 5):  # K/V cached once, reused at every step (other latents, timesteps)
        step = unet_inputs(seed=step_seed)
        step["encoder_hidden_states"] = inputs["encoder_hidden_states"]
        assert torch.allclose(run(fused, step), run(unet_with_lora, step, cross_attention_kwargs=kwargs), atol=1e-5)
    assert torch.allclose(run(fused, inputs), reference, atol=1e-5)
    assert not any(isinstance(m, TwoBranchLoraLinear) for m in fused.modules())  # no LoRA layer left


@pytest.mark.parametrize("branch", [Branch.CONTENT, Branch.STYLE])
def test_fused_single_branch_matches(unet_with_lora, branch):
    model = copy.deepcopy(unet_with_lora)
    layers = [m for m in model.modules() if isinstance(m, TwoBranchLoraLinear)]
    assert layers
    for layer in layers:
        layer.active = {branch}
    inputs = unet_inputs(seed=4)
    reference = run(model, inputs)
    fuse_for_generation(model, inputs["encoder_hidden_states"], None, None)
    assert torch.allclose(run(model, inputs), reference, atol=1e-5)


def test_cached_kv_refuses_another_batch(unet_with_lora):
    model = copy.deepcopy(unet_with_lora)
    inputs = unet_inputs(seed=1)
    fuse_for_generation(model, inputs["encoder_hidden_states"], inputs["encoder_hidden_states"], None)
    small = unet_inputs(seed=1, batch=1)
    small["timestep"] = small["timestep"][:1]
    with pytest.raises(ValueError, match="another batch"):
        run(model, small)
