"""Prompt separation against stock diffusers attention (arXiv 2412.04465, Sec. 3, "Prompt separation")."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from unziplora.names import Branch, Role
from unziplora.core.inject import attention_modules, inject_two_branch_lora, remove_two_branch_lora
from unziplora.models.profiles import load_profile, uniform_profile
from tests.pipelines import TinySDXLSpec, tiny_sdxl_components

MASKED = uniform_profile(Role.MASKED, Role.MASKED, "masked")


def randomize(lora, seed=0):
    """Non-trivial masks and mergers, so every part of the update matters."""
    g = torch.Generator().manual_seed(seed)
    for layer in lora.layers.values():
        n = layer.out_features
        content, style = layer.mask(Branch.CONTENT), layer.mask(Branch.STYLE)
        content.copy_(torch.rand(n, generator=g) < 0.5)
        style.copy_(~content & (torch.rand(n, generator=g) < 0.7))
        with torch.no_grad():
            layer.merger(Branch.CONTENT).copy_(torch.rand(n, generator=g))
            layer.merger(Branch.STYLE).copy_(torch.rand(n, generator=g))


def merge_into_weights(unet_with_lora) -> UNet2DConditionModel:
    """A copy of the UNet with both branches folded into W and the stock processor."""
    merged = copy.deepcopy(unet_with_lora)
    lora_layers = {n: m for n, m in merged.named_modules() if hasattr(m, "get_delta_weight")}
    with torch.no_grad():
        for layer in lora_layers.values():
            layer.base.weight += layer.get_delta_weight(Branch.CONTENT) + layer.get_delta_weight(Branch.STYLE)
    remove_two_branch_lora(merged)
    return merged


@pytest.fixture(scope="module")
def unet():
    return tiny_sdxl_components(TinySDXLSpec(), seed=0)["unet"].eval()


def unet_inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(batch, 77, 64, generator=g),
        "added_cond_kwargs": {"text_embeds": torch.randn(batch, 32, generator=g), "time_ids": torch.rand(batch, 6, generator=g) * 32},
    }


def test_same_prompt_everywhere_equals_stock_attention_with_merged_lora(unet):
    model = copy.deepcopy(unet)
    lora = inject_two_branch_lora(model, load_profile("sdxl"), rank=4)
    randomize(lora)
    merged = merge_into_weights(model)
    inputs = unet_inputs()
    ehs = inputs["encoder_hidden_states"]
    kwargs = {"content_encoder_hidden_states": ehs, "style_encoder_hidden_states": ehs}
    with torch.no_grad():
        ours = model(**inputs, cross_attention_kwargs=kwargs).sample
        stock = merged(**inputs).sample
    assert torch.allclose(ours, stock, atol=1e-5), (ours - stock).abs().max()


def test_separated_prompts_change_only_cross_attention_kv(unet):
    model = copy.deepcopy(unet)
    lora = inject_two_branch_lora(model, load_profile("sdxl"), rank=4)
    randomize(lora)
    inputs = unet_inputs()
    other = torch.randn_like(inputs["encoder_hidden_states"])
    with torch.no_grad():
        same = model(**inputs).sample
        separated = model(**inputs, cross_attention_kwargs={"content_encoder_hidden_states": other}).sample
    assert not torch.allclose(same, separated)
    # with both branches off, the extra prompts have nothing to act on
    lora.set_active(set())
    with torch.no_grad():
        off_a = model(**inputs).sample
        off_b = model(**inputs, cross_attention_kwargs={"content_encoder_hidden_states": other}).sample
    assert torch.equal(off_a, off_b)


def test_single_attention_module_matches_formula():
    """K = W_K e(p) + dW_c e(p_c) + dW_s e(p_s) on one cross-attention module, by hand."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    wrapper = torch.nn.Module()
    wrapper.attn2 = attn
    lora = inject_two_branch_lora(wrapper, MASKED, rank=3)
    randomize(lora)
    x, p, pc, ps = torch.randn(1, 6, 16), torch.randn(1, 5, 12), torch.randn(1, 5, 12), torch.randn(1, 5, 12)
    out = attn(x, encoder_hidden_states=p, content_encoder_hidden_states=pc, style_encoder_hidden_states=ps)
    k_layer, v_layer = attn.to_k, attn.to_v
    key = k_layer.base(p) + pc @ k_layer.get_delta_weight(Branch.CONTENT).T + ps @ k_layer.get_delta_weight(Branch.STYLE).T
    value = v_layer.base(p) + pc @ v_layer.get_delta_weight(Branch.CONTENT).T + ps @ v_layer.get_delta_weight(Branch.STYLE).T
    query = attn.to_q(x)
    split = lambda t: t.view(1, -1, 2, 8).transpose(1, 2)
    h = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value))
    expected = attn.to_out[0](h.transpose(1, 2).reshape(1, -1, 16))
    assert torch.allclose(out, expected, atol=1e-5)


def test_batch_mismatch_is_a_clear_error():
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    wrapper = torch.nn.Module()
    wrapper.attn2 = attn
    inject_two_branch_lora(wrapper, MASKED, rank=3)
    with pytest.raises(ValueError, match="same batch"):
        attn(torch.randn(2, 6, 16), encoder_hidden_states=torch.randn(2, 5, 12),
             content_encoder_hidden_states=torch.randn(1, 5, 12))


def test_remove_restores_stock_modules(unet):
    model = copy.deepcopy(unet)
    inject_two_branch_lora(model, load_profile("sdxl"), rank=2)
    remove_two_branch_lora(model)
    for _, attn in attention_modules(model):
        assert isinstance(attn.to_k, torch.nn.Linear) and isinstance(attn.processor, AttnProcessor2_0)
    with torch.no_grad():
        assert torch.equal(model(**unet_inputs()).sample, unet(**unet_inputs()).sample)


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_what_the_processor_copies_from_diffusers_is_still_what_diffusers_has():
    """The blocks marked "Copied from diffusers...AttnProcessor2_0.__call__" appear, line for line and
    in order, in the installed diffusers' AttnProcessor2_0: a change there fails here (drift shows)."""
    import inspect

    from diffusers.models.attention_processor import AttnProcessor2_0

    from unziplora.core import attention

    theirs = _code_lines(inspect.getsource(AttnProcessor2_0.__call__))
    ours = inspect.getsource(attention.SeparatedAttnProcessor.__call__)
    marker = "# Copied from diffusers.models.attention_processor.AttnProcessor2_0.__call__"
    blocks = [part.split("# End of copy")[0] for part in ours.split(marker)[1:]]
    assert len(blocks) == 2 and all(_code_lines(b) for b in blocks)
    for block in blocks:
        lines = _code_lines(block)
        start = theirs.index(lines[0])  # raises if diffusers no longer has the first line
        assert theirs[start:start + len(lines)] == lines
