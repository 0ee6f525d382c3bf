"""Column scoring, selection and the orthogonality loss on hand-computed cases."""

import pytest
import torch

from unziplora.core.columns import (
    columns_per_refresh,
    cone_ranking,
    cone_score,
    grow_masks,
    orthogonality_loss,
    scores_tie,
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


def test_grow_masks_only_grow_by_k_new_columns_and_style_avoids_content():
    """The authors' overlap rule: content picks first among the columns it does not hold (it may
    take style's); style picks among those content does not hold. (Was: masks kept disjoint both
    ways, which left no column for the mergers to learn on in both-masked layers.)"""
    torch.manual_seed(0)
    n, k = 50, 5
    content = torch.zeros(n, dtype=torch.bool)
    style = torch.zeros(n, dtype=torch.bool)
    overlapped = False
    for refresh in range(3):
        scores_c, scores_s = torch.rand(n), torch.rand(n)
        new_content, new_style = grow_masks(scores_c, scores_s, content, style, k)
        assert (new_content & content).sum() == content.sum(), "content mask shrank"
        assert (new_style & style).sum() == style.sum(), "style mask shrank"
        picked_c, picked_s = new_content & ~content, new_style & ~style
        assert int(picked_c.sum()) == k and int(picked_s.sum()) == k  # k NEW columns each
        assert not (picked_s & new_content).any(), "style picked a column content holds"
        # content's pick is its top k among the columns it did not hold, style's or not
        assert picked_c.equal(top_k_columns(scores_c, k, ~content))
        overlapped |= bool((picked_c & style).any())
        content, style = new_content, new_style
    assert content.float().mean() == style.float().mean() == pytest.approx(0.30)  # 10 / 20 / 30 %
    assert overlapped, "content never took a style column: the test did not exercise the overlap"


def test_content_takes_a_style_column_it_scores_highest():
    style = torch.tensor([False, False, True, False])
    content, new_style = grow_masks(torch.tensor([0.0, 0.1, 0.9, 0.2]), torch.tensor([0.0, 0.5, 0.9, 0.1]),
                                    torch.zeros(4, dtype=torch.bool), style, 1)
    assert content.tolist() == [False, False, True, False]  # style's column: the overlap
    assert new_style.tolist() == [False, True, True, False]  # style's next best that content lacks


def test_planted_importance_is_what_gets_selected():
    """Columns whose update and gradient are large score high; they are the ones chosen, not [0, k)."""
    out, inp, k = 40, 16, 4
    planted = torch.tensor([33, 7, 21, 38])
    delta_weight = torch.full((out, inp), 1e-4)
    delta_grad = torch.full((out, inp), 1e-4)  # |cone| = 1e-8: below the threshold
    delta_weight[planted] = 0.05
    delta_grad[planted] = 0.01
    scores = cone_score(delta_weight, delta_grad)
    chosen = top_k_columns(scores, k)
    assert chosen.nonzero().flatten().tolist() == sorted(planted.tolist())
    assert not chosen[:k].all()


def test_tied_scores_are_ranked_by_the_cone_magnitude():
    """Saturated columns (every entry above the threshold) tie at score 1: the cone's mean
    magnitude picks among them, not the column index."""
    delta_weight = torch.ones(6, 4)
    delta_grad = torch.tensor([1.0, 2.0, 3.0, 9.0, 8.0, 1e-9])[:, None].expand(6, 4)
    ranking = cone_ranking(delta_weight, delta_grad)
    assert ranking[:5, 0].eq(1).all() and ranking[5, 0] == 0
    assert top_k_columns(ranking, 2).tolist() == [False, False, False, True, True, False]
    assert top_k_columns(ranking[:, 0], 2).tolist() == [True, True, False, False, False, False]  # index alone
    assert top_k_columns(ranking, 2, eligible=torch.tensor([True] * 3 + [False] * 3)).tolist() == \
        [False, True, True, False, False, False]


def test_ties_are_reported_once_per_branch():
    ties = []
    empty = torch.zeros(10, dtype=torch.bool)
    grow_masks(torch.zeros(10), torch.rand(10), empty, empty, 2, on_tie=ties.append)
    assert ties == ["content"]
    assert scores_tie(torch.zeros(5), 2) and not scores_tie(torch.tensor([0.0, 1, 0, 0, 0]), 2)
    assert not scores_tie(torch.zeros(5), 2, torch.tensor([True, True, False, False, False]))  # no choice left


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
