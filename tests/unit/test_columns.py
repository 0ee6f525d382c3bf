"""Column scoring, selection and the orthogonality loss on hand-computed cases."""

import pytest
import torch

from unziplora.lora.columns import (
    columns_per_refresh,
    cone_score,
    grow_masks,
    orthogonality_loss,
    top_k_columns,
)


def test_cone_score_counts_entries_above_threshold_per_column():
    delta_weight = torch.tensor([[1.0, 2.0, 0.0], [1e-3, 1e-3, 1.0]])
    delta_grad = torch.tensor([[1.0, 1e-6, 5.0], [1e-3, 1.0, -1.0]])
    # cone = [[1, 2e-6, 0], [1e-6, 1e-3, -1]] -> |cone| > 1e-5: row 0 -> 1 of 3, row 1 -> 2 of 3
    scores = cone_score(delta_weight, delta_grad, threshold=1e-5)
    assert torch.allclose(scores, torch.tensor([1 / 3, 2 / 3]))


def test_cone_score_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        cone_score(torch.zeros(2, 3), torch.zeros(3, 2))


def test_top_k_picks_exactly_k_with_stable_tie_break():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1])
    chosen = top_k_columns(scores, 3)
    assert chosen.sum() == 3
    # 0.9 first, then the two LOWEST-indexed of the tied 0.5s
    assert chosen.tolist() == [True, True, True, False, False]


def test_top_k_with_all_scores_tied_is_first_k():
    chosen = top_k_columns(torch.zeros(10), 4)
    assert chosen.tolist() == [True] * 4 + [False] * 6


def test_top_k_respects_eligibility_and_caps_at_available():
    eligible = torch.tensor([False, True, False, True])
    chosen = top_k_columns(torch.tensor([9.0, 1.0, 8.0, 2.0]), 3, eligible)
    assert chosen.tolist() == [False, True, False, True]


def test_columns_per_refresh_floors_like_the_authors():
    assert columns_per_refresh(320, 0.1) == 32
    assert columns_per_refresh(15, 0.1) == 1
    assert columns_per_refresh(9, 0.1) == 0


def test_grow_masks_disjoint_only_grow_and_k_each():
    torch.manual_seed(0)
    n, k = 50, 5
    content = torch.zeros(n, dtype=torch.bool)
    style = torch.zeros(n, dtype=torch.bool)
    for refresh in range(3):
        # same scores for both branches: the hardest case for disjointness
        scores = torch.rand(n)
        new_content, new_style = grow_masks(scores, scores.clone(), content, style, k)
        assert (new_content & content).sum() == content.sum(), "content mask shrank"
        assert (new_style & style).sum() == style.sum(), "style mask shrank"
        assert not (new_content & new_style).any(), "masks overlap"
        assert int(new_content.sum()) - int(content.sum()) <= k
        content, style = new_content, new_style
    assert content.sum() <= 3 * k and style.sum() <= 3 * k
    assert content.float().mean() <= 0.30


def test_grow_masks_selects_exactly_k_of_its_own_scores():
    scores_c = torch.arange(10, dtype=torch.float)  # prefers high indices
    scores_s = torch.arange(10, dtype=torch.float)
    empty = torch.zeros(10, dtype=torch.bool)
    content, style = grow_masks(scores_c, scores_s, empty, empty, 2)
    assert content.nonzero().flatten().tolist() == [8, 9]
    assert style.nonzero().flatten().tolist() == [6, 7]  # content already holds 8, 9


def test_grow_masks_all_columns_branch_keeps_its_mask_and_other_is_free():
    full = torch.ones(6, dtype=torch.bool)
    empty = torch.zeros(6, dtype=torch.bool)
    content, style = grow_masks(None, torch.tensor([0.0, 5, 4, 3, 2, 1]), full, empty, 2)
    assert content.all()
    assert style.tolist() == [False, True, True, False, False, False]


def test_orthogonality_loss_matches_hand_computation():
    content = torch.tensor([1.0, 0.5, 0.0, 0.2, -0.2])  # layer 1: 3 columns, layer 2: 2
    style = torch.ones(5)  # mean |.| = 0.5 on layer 1, 0.2 on layer 2
    loss = orthogonality_loss(content, style, [3, 2])
    assert loss.item() == pytest.approx((0.5 + 0.2) / 2)  # layers weigh the same, whatever their width


def test_orthogonality_loss_is_zero_for_disjoint_masks():
    mask_c = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mask_s = torch.tensor([0.0, 0.0, 1.0, 1.0])
    merger = torch.full((4,), 0.7)
    assert orthogonality_loss(merger * mask_c, merger * mask_s, [4]).item() == 0.0
