"""The two-branch layer on small hand-made linear layers."""

import pytest
import torch
from torch import nn

from unziplora.names import Branch, Role
from unziplora.core.inject import TwoBranchLoRA
from unziplora.core.columns import top_k_columns
from unziplora.core.layer import TwoBranchLoraLinear

MASKED = {Branch.CONTENT: Role.MASKED, Branch.STYLE: Role.MASKED}


def make_layer(roles=MASKED, rank=3, out_features=8, in_features=5, init="gaussian", seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features)
    return TwoBranchLoraLinear(base, rank, roles, init, torch.Generator().manual_seed(seed))


def test_forward_equals_dense_formula():
    layer = make_layer()
    layer.mask(Branch.CONTENT)[:4] = True
    layer.mask(Branch.STYLE)[4:6] = True
    with torch.no_grad():
        layer.merger(Branch.CONTENT).uniform_(0, 1)
        layer.merger(Branch.STYLE).uniform_(0, 1)
    x, xc, xs = torch.randn(3, 2, 5), torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    expected = layer.base(x) + xc @ layer.get_delta_weight(Branch.CONTENT).T + xs @ layer.get_delta_weight(Branch.STYLE).T
    assert torch.allclose(layer(x, xc, xs), expected, atol=1e-6)
    layer.active = {Branch.STYLE}  # one branch with its own input
    assert torch.allclose(layer(x, xc, xs), layer.base(x) + xs @ layer.get_delta_weight(Branch.STYLE).T, atol=1e-6)
    layer.active = {Branch.CONTENT, Branch.STYLE}
    # omitted branch inputs default to x
    same = layer.base(x) + x @ (layer.get_delta_weight(Branch.CONTENT) + layer.get_delta_weight(Branch.STYLE)).T
    assert torch.allclose(layer(x), same, atol=1e-6)


def test_under_autocast_the_lora_input_is_not_copied_to_fp32_and_the_result_is_unchanged():
    """Autocast casts the matmul inputs itself: an explicit fp32 copy of x would only cost a kernel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class FloatCopiesOf(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.count = shape, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].shape == self.shape \
                    and kwargs.get("dtype") == torch.float32:
                self.count += 1
            return func(*args, **kwargs)

    layer = make_layer(rank=3, out_features=8, in_features=6)
    layer.mask(Branch.CONTENT)[:4] = True
    layer.base.to(torch.bfloat16)
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with FloatCopiesOf(x.shape) as copies:
            out = layer(x)
        separated = layer(x, x.clone(), x.clone())
    assert copies.count == 0
    ups, down = layer.folded_ups().flatten(1).bfloat16(), layer.down_weight.flatten(0, 1).bfloat16()
    expected = layer.base(x) + (x @ down.T) @ ups.T
    assert out.dtype == torch.bfloat16 and torch.allclose(out, expected, atol=2e-2)
    assert torch.allclose(separated, out, atol=2e-2)
    with FloatCopiesOf(x.shape) as copies:  # no autocast: the LoRA runs in its own fp32
        layer(x)
    assert copies.count == 1


def test_gaussian_init_has_std_one_over_rank_and_zero_b_starts_at_base():
    layer = make_layer(rank=8, out_features=256, in_features=256)
    for branch in Branch:
        assert layer.down(branch).std().item() == pytest.approx(1 / 8, rel=0.05)
        assert layer.up(branch).std().item() == pytest.approx(1 / 8, rel=0.05)
    zero = make_layer(init="zero_b")
    x = torch.randn(4, 5)
    zero.mask(Branch.CONTENT)[:] = True
    zero.mask(Branch.STYLE)[:] = True
    assert torch.equal(zero(x), zero.base(x))
    with pytest.raises(ValueError):
        make_layer(init="xavier")


def test_masked_columns_get_zero_gradient():
    layer = make_layer()
    layer.mask(Branch.CONTENT)[[1, 3]] = True
    layer.mask(Branch.STYLE)[[0, 6]] = True
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    grad_c, grad_s = layer.grads(Branch.CONTENT)[1], layer.grads(Branch.STYLE)[1]
    outside_c = ~layer.mask(Branch.CONTENT)
    assert torch.all(grad_c[outside_c] == 0) and torch.all(grad_c[layer.mask(Branch.CONTENT)].abs().sum(1) > 0)
    assert torch.all(grad_s[~layer.mask(Branch.STYLE)] == 0) and torch.all(grad_s[layer.mask(Branch.STYLE)].abs().sum(1) > 0)
    # mergers outside the mask get no gradient either
    assert torch.all(layer.grads(Branch.CONTENT)[2][outside_c] == 0)


def test_unmasked_step_trains_every_column():
    layer = make_layer()
    layer.masking = False  # the refresh step
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    assert torch.all(layer.grads(Branch.CONTENT)[1].abs().sum(1) > 0)


def test_all_columns_role_ignores_the_mask():
    roles = {Branch.CONTENT: Role.ALL, Branch.STYLE: Role.MASKED}
    layer = make_layer(roles)
    assert layer.effective_mask(Branch.CONTENT).all()
    assert not layer.effective_mask(Branch.STYLE).any()


def test_mergers_learn_only_where_both_masks_are_on_and_stay_clamped():
    roles = {Branch.CONTENT: Role.ALL, Branch.STYLE: Role.MASKED}
    layer = make_layer(roles)
    layer.mask(Branch.STYLE)[[2, 5]] = True
    lora = TwoBranchLoRA({"layer": layer}, rank=3)
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    assert all(layer.grads(b)[2].abs().sum() > 0 for b in Branch)  # the pooled mergers' gradient, per layer
    lora.restrict_merger_grads()
    for branch in Branch:
        nonzero = (layer.grads(branch)[2] != 0).nonzero().flatten().tolist()
        assert set(nonzero) <= {2, 5}
    with torch.no_grad():
        layer.merger(Branch.CONTENT).copy_(torch.linspace(-1, 2, 8))
    lora.clamp_mergers()
    assert layer.merger(Branch.CONTENT).min() >= 0 and layer.merger(Branch.CONTENT).max() <= 1


def test_cone_scores_match_hand_built_gradient():
    layer = make_layer()
    layer.masking = False
    layer(torch.randn(4, 5)).pow(2).sum().backward()
    a, b = layer.down(Branch.CONTENT), layer.up(Branch.CONTENT)
    a_grad, b_grad, _ = layer.grads(Branch.CONTENT)
    dw = b @ a
    g = b_grad @ a + b @ a_grad  # mergers are 1
    expected = ((dw * g).abs() > 1e-5).float().mean(1)
    assert torch.allclose(layer.cone_scores(Branch.CONTENT), expected)


def test_refresh_masks_grows_each_masked_branch_by_k_new_columns():
    """Three refreshes: 10 / 20 / 30 % of the columns each; style never picks content's columns.
    (Was: masks disjoint both ways and a pick could repeat a held column, 2 to 6 columns.)"""
    layer = make_layer(out_features=20)
    for refresh in range(3):
        layer.masking = False
        layer.zero_grad()
        layer(torch.randn(4, 5)).pow(2).sum().backward()
        before = layer.mask(Branch.CONTENT).clone(), layer.mask(Branch.STYLE).clone()
        layer.refresh_masks(fraction=0.1)
        assert (layer.mask(Branch.CONTENT) & before[0]).equal(before[0])
        new_style = layer.mask(Branch.STYLE) & ~before[1]
        assert not (new_style & layer.mask(Branch.CONTENT)).any()
        assert int(layer.mask(Branch.CONTENT).sum()) == int(layer.mask(Branch.STYLE).sum()) == 2 * (refresh + 1)


def test_cone_scores_at_the_loss_scale_select_by_importance_not_index():
    """True gradients of a small update sit below the 1e-5 threshold: every score 0, a tie the
    layer reports. At the fp16 loss scale the authors score at, the scores rank the columns."""
    layer = make_layer(out_features=40, in_features=16, rank=4)
    with torch.no_grad():
        layer.up_weight.mul_(0.1)
        layer.down_weight.mul_(0.1)
    layer.masking = False
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    (layer(x) - layer.base(x)).pow(2).mean().backward()
    true = layer.cone_scores(Branch.CONTENT)
    scaled = layer.cone_scores(Branch.CONTENT, grad_scale=2.0**16)
    assert true.max() == 0 and scaled.max() > 0 and len(set(scaled.tolist())) > 1
    assert layer.refresh_masks(0.1) == [Branch.CONTENT, Branch.STYLE]  # both tie on true gradients
    layer.mask(Branch.CONTENT).zero_()
    layer.mask(Branch.STYLE).zero_()
    assert layer.refresh_masks(0.1, grad_scale=2.0**16) == []
    ranking = layer.cone_ranking(Branch.CONTENT, grad_scale=2.0**16)
    assert torch.equal(ranking[:, 0], scaled)
    assert torch.equal(layer.mask(Branch.CONTENT), top_k_columns(ranking, 4))
    assert not layer.mask(Branch.CONTENT)[:4].all()
    # the chosen columns hold the highest scores
    assert scaled[layer.mask(Branch.CONTENT)].min() >= scaled[~layer.mask(Branch.CONTENT)].max()


def test_masked_up_is_an_ordinary_lora_of_the_branch_alone():
    """One branch alone is M (.) B A: the mergers act only beside the other branch (the authors'
    single-branch forward and export). (Was: the merger folded in as well.)"""
    layer = make_layer()
    layer.mask(Branch.CONTENT)[:5] = True
    with torch.no_grad():
        layer.merger(Branch.CONTENT).fill_(0.25)
    x = torch.randn(2, 5)
    layer.active = {Branch.CONTENT}
    plain = layer.base(x) + (x @ layer.down(Branch.CONTENT).T) @ layer.masked_up(Branch.CONTENT).T
    assert torch.allclose(layer(x), plain, atol=1e-6)
    mask = layer.mask(Branch.CONTENT).float()[:, None]
    assert torch.allclose(layer.masked_up(Branch.CONTENT), mask * layer.up(Branch.CONTENT))
    layer.active = {Branch.CONTENT, Branch.STYLE}  # together, the merger scales content's columns
    assert torch.allclose(layer.get_delta_weight(Branch.CONTENT), 0.25 * mask * layer.up(Branch.CONTENT) @ layer.down(Branch.CONTENT))


def test_merge_into_base_adds_the_active_updates():
    layer = make_layer()
    layer.mask(Branch.CONTENT)[:3] = True
    layer.mask(Branch.STYLE)[2:6] = True
    x = torch.randn(3, 5)
    expected = layer(x)
    merged = layer.merge_into_base()
    assert merged is layer.base and torch.allclose(merged(x), expected, atol=1e-6)


def test_rank_must_be_positive():
    with pytest.raises(ValueError):
        make_layer(rank=0)


def test_unet_wide_merger_ops_equal_the_per_layer_definitions():
    """TwoBranchLoRA's batched L_orth, gradient restriction and clamp match layer by layer."""
    roles = [MASKED, {Branch.CONTENT: Role.ALL, Branch.STYLE: Role.MASKED}, MASKED]
    layers = {f"l{i}": make_layer(r, out_features=6 + 3 * i, seed=i) for i, r in enumerate(roles)}
    lora = TwoBranchLoRA(layers, rank=3)
    g = torch.Generator().manual_seed(1)
    for layer in layers.values():
        for b in Branch:
            with torch.no_grad():
                layer.merger(b).copy_(torch.rand(layer.out_features, generator=g) * 1.4 - 0.2)
            layer.mask(b).copy_(torch.rand(layer.out_features, generator=g) < 0.5)

    (pooled,) = lora.merger_parameters()  # one parameter: every layer's (2, out) block, end to end
    assert pooled.shape == (2, sum(layer.out_features for layer in layers.values()))
    batched = lora.orthogonality_loss()
    batched.backward()
    batched_grad = pooled.grad.clone()
    pooled.grad = None
    # The paper's form: mean over layers of mean_j |m_c M_c * m_s M_s|, through each layer's own slice.
    per_layer = torch.stack([(layer.column_scale(Branch.CONTENT) * layer.column_scale(Branch.STYLE)).abs().mean()
                             for layer in layers.values()]).mean()
    per_layer.backward()
    assert batched.item() > 0
    torch.testing.assert_close(batched, per_layer)
    torch.testing.assert_close(batched_grad, pooled.grad)

    expected = []
    for layer in layers.values():
        shared = layer.effective_mask(Branch.CONTENT) & layer.effective_mask(Branch.STYLE)
        expected.append(torch.stack([layer.grads(b)[2] for b in Branch]) * shared)
    lora.restrict_merger_grads()
    assert torch.equal(torch.cat(expected, dim=1), pooled.grad)

    lora.clamp_mergers()
    assert pooled.min() == 0.0 and pooled.max() == 1.0
    assert all(0 <= layer.mergers.min() and layer.mergers.max() <= 1 for layer in layers.values())


def test_mask_derived_values_follow_every_mask_change():
    """L_orth and the merger-gradient restriction reuse what they derive from the masks until a
    mask changes in place or masking is switched: each change must show in the next result."""
    layers = {f"l{i}": make_layer(out_features=6, seed=i) for i in range(2)}
    lora = TwoBranchLoRA(layers, rank=3)

    def per_layer_orth():
        return torch.stack([(l.column_scale(Branch.CONTENT) * l.column_scale(Branch.STYLE)).abs().mean()
                            for l in layers.values()]).mean()

    def restricted():
        lora.pool.weight.grad = torch.ones_like(lora.pool.weight)
        lora.restrict_merger_grads()
        return [torch.stack([layer.grads(b)[2] for b in Branch]) for layer in layers.values()]

    assert lora.orthogonality_loss().item() == 0 and all(g.sum() == 0 for g in restricted())  # empty masks
    layers["l1"].mask(Branch.CONTENT)[[1, 2]] = True
    layers["l1"].mask(Branch.STYLE)[[2, 4]] = True
    torch.testing.assert_close(lora.orthogonality_loss(), per_layer_orth())
    assert lora.orthogonality_loss().item() > 0
    assert [g[0].nonzero().flatten().tolist() for g in restricted()] == [[], [2]]
    lora.set_masking(False)  # the refresh step: every column counts
    torch.testing.assert_close(lora.orthogonality_loss(), torch.tensor(1.0))
    assert all(g.all() for g in restricted())


def test_exported_branch_is_mask_times_update_without_mergers():
    """The authors' export: content alone = M_c (.) B_c A_c, whatever the mergers learned."""
    roles = {Branch.CONTENT: Role.MASKED, Branch.STYLE: Role.ALL}
    layer = make_layer(roles)
    layer.mask(Branch.CONTENT)[[1, 4]] = True
    with torch.no_grad():
        layer.mergers.fill_(0.3)
    lora = TwoBranchLoRA({"m": layer}, rank=3)
    content, style = lora.ordinary_lora(Branch.CONTENT), lora.ordinary_lora(Branch.STYLE)
    mask = layer.mask(Branch.CONTENT).float()[:, None]
    assert torch.allclose(content["m.lora_B.weight"] @ content["m.lora_A.weight"],
                          mask * (layer.up(Branch.CONTENT) @ layer.down(Branch.CONTENT)))
    assert torch.allclose(style["m.lora_B.weight"], layer.up(Branch.STYLE))  # all columns, merger not folded
    assert torch.equal(lora.state_dict()["m.content.merger"], torch.full((8,), 0.3))  # the full state keeps m


def test_separated_inputs_are_stacked_once_and_restacked_when_they_change():
    """K and V of every cross-attention layer share the stacked (p_c, p_s) pair of a pass; a tensor
    changed in place, or one that needs a gradient, is stacked afresh."""
    from unziplora.core.layer import _stacked

    content, style = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    first = _stacked(content, style, torch.float32)
    assert _stacked(content, style, torch.float32) is first
    assert torch.equal(first, torch.stack([content, style]).flatten(1, -2))
    content.mul_(2)  # same object, new values
    assert torch.equal(_stacked(content, style, torch.float32)[0], content.flatten(0, -2))
    assert _stacked(content.clone(), style, torch.float32) is not _stacked(content, style, torch.float32)
    grad = content.clone().requires_grad_(True)
    assert _stacked(grad, style, torch.float32) is not _stacked(grad, style, torch.float32)
