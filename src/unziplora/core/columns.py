"""Column importance, column selection and the orthogonality loss: pure tensor functions.

"Column" means one output feature of a linear layer (one row of B in PyTorch's (out, in)
layout), as in UnZipLoRA (arXiv 2412.04465, Sec. 3, "Column separation").
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

CONE_THRESHOLD = 1e-5
# The scale of the gradients the authors score: their fp16 run (accelerate, train_unziplora.py)
# computes the cone right after `accelerator.backward(loss)`, i.e. on gradients still multiplied
# by the GradScaler's loss scale, and unscales only inside `clip_grad_norm_` afterwards. The
# scale starts at 2^16 and grows only every 2,000 steps, so a 600-step run scores at 2^16 unless
# a step overflowed. Without a GradScaler (fp32, bf16) we score at this same scale.
CONE_LOSS_SCALE = 2.0**16


def cone_score(
    delta_weight: torch.Tensor, delta_grad: torch.Tensor, threshold: float = CONE_THRESHOLD
) -> torch.Tensor:
    """Per-column importance from the "cone" of a low-rank update (arXiv 2412.04465, Sec. 3, "Column separation").

    cone = dW (.) G, the elementwise product of the update dW = B A (out x in) and its
    gradient G = dB A + B dA scaled by the merger vector, as the authors' code forms them
    (the caller builds both, G at the loss scale; see TwoBranchLoraLinear.cone_scores). A
    column's score is the fraction of its entries with |cone| > threshold (1e-5 in the
    authors' code). Returns a float tensor of shape (out,).
    """
    return cone_ranking(delta_weight, delta_grad, threshold)[:, 0]


def cone_ranking(
    delta_weight: torch.Tensor, delta_grad: torch.Tensor, threshold: float = CONE_THRESHOLD
) -> torch.Tensor:
    """(out, 2): per column the cone score (`cone_score`) and, to break its ties, the mean |cone|.

    The score counts entries, so it ties often: every column at 1.0 where the whole update is
    important. The authors then keep only columns strictly above the k-th score (none, if more
    than k sit at 1.0); we rank tied columns by the cone's magnitude instead, the second measure
    of the authors' own cone analysis (record_utils/cone.py, "avg"), so that no pick falls to
    the column index while the cone tells the columns apart.
    """
    if delta_weight.shape != delta_grad.shape:
        raise ValueError(f"cone_score: shapes differ, {tuple(delta_weight.shape)} vs {tuple(delta_grad.shape)}")
    cone = (delta_weight.float() * delta_grad.float()).abs()
    return torch.stack([(cone > threshold).float().mean(dim=1), cone.mean(dim=1)], dim=1)


def top_k_columns(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of exactly min(k, #eligible) eligible columns with the highest scores.

    `scores` is (out,) or (out, keys), ranked lexicographically (the first key first, the next
    ones break its ties; `cone_ranking`). The authors' code keeps the columns whose score is
    strictly greater than the k-th largest, which selects fewer than k when scores tie at the
    cut. We pick exactly k; among columns equal in every key the lower index wins (a stable
    sort), and `scores_tie` tells the caller when the whole choice came down to that.
    """
    keys = scores[:, None] if scores.ndim == 1 else scores
    if keys.ndim != 2:
        raise ValueError("top_k_columns: scores must be a vector or a (columns, keys) matrix")
    n = keys.shape[0]
    if eligible is None:
        eligible = torch.ones(n, dtype=torch.bool, device=scores.device)
    order = torch.arange(n, device=scores.device)
    for key in reversed(keys.float().unbind(1)):  # least significant key first, each sort stable
        ranked = torch.where(eligible, key, torch.full_like(key, float("-inf")))[order]
        order = order[torch.sort(ranked, descending=True, stable=True).indices]
    k = min(max(int(k), 0), int(eligible.sum()))
    chosen = torch.zeros(n, dtype=torch.bool, device=scores.device)
    chosen[order[:k]] = True
    return chosen


def scores_tie(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> bool:
    """True when the cone scores (the first key) of the more than k eligible columns are all
    equal: the threshold then tells no column apart and the choice rests on the tie-break
    alone (the cone's magnitude, and the index where that ties too, e.g. B = 0)."""
    values = scores if eligible is None else scores[eligible]
    values = values[:, 0] if values.ndim == 2 else values
    return values.shape[0] > k > 0 and bool((values == values[0]).all())


def columns_per_refresh(out_features: int, fraction: float) -> int:
    """k = floor(out_features * fraction), as the authors compute it (int(out * 0.1))."""
    return int(out_features * fraction)


def grow_masks(
    content_scores: torch.Tensor | None,
    style_scores: torch.Tensor | None,
    content_mask: torch.Tensor,
    style_mask: torch.Tensor,
    k: int,
    on_tie: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask refresh of one layer (arXiv 2412.04465, Sec. 3, "Column separation").

    A branch whose scores are None trains all columns here (block separation) and keeps its
    mask. Content picks first, k columns among those it does not hold yet; it may take columns
    style holds. Style then picks k among the columns neither it nor content (grown) holds.
    Masks only grow: the new selection is OR-ed into the old mask. Where both branches are
    masked the masks may overlap; the overlap is where the mergers learn and the orthogonality
    loss pushes them apart.

    This is the authors' rule (`mask_updated_elements`: style's scores are set to -inf on
    content's mask, content's are left as they are), with one difference: they rank a branch's
    held columns too, so a pick can repeat one and a mask grows by less than k. We rank new
    columns only, so each refresh adds exactly k and three refreshes reach the 30 % of columns
    the paper's schedule describes. `on_tie("content" | "style")` is called when a branch's
    choice was decided by index alone (`scores_tie`).
    """
    if content_scores is not None:
        pool = ~content_mask
        if on_tie is not None and scores_tie(content_scores, k, pool):
            on_tie("content")
        content_mask = content_mask | top_k_columns(content_scores, k, pool)
    if style_scores is not None:
        pool = ~style_mask & ~content_mask if content_scores is not None else ~style_mask
        if on_tie is not None and scores_tie(style_scores, k, pool):
            on_tie("style")
        style_mask = style_mask | top_k_columns(style_scores, k, pool)
    return content_mask, style_mask


def layer_mean_weights(widths: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """1 / (layers * width) per column: a weighted sum with these is the mean over layers of each layer's mean."""
    if not widths:
        raise ValueError("orthogonality_loss: no layers given")
    sizes = torch.tensor(list(widths))  # on the CPU: repeat_interleave has no meta kernel (bench memory's UNet)
    return torch.repeat_interleave(1.0 / (sizes * len(sizes)), sizes).to(device, dtype)


def orthogonality_loss(content: torch.Tensor, style: torch.Tensor, widths: Sequence[int],
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_orth = mean over layers of mean_j |m_c[j] M_c[j] * m_s[j] M_s[j]| (arXiv 2412.04465, Sec. 3, "Column separation", orthogonality loss).

    `content` and `style` hold every layer's masked merger vectors (m_c * M_c, m_s * M_s) laid
    end to end, `widths[i]` columns for layer i. The per-layer means are averaged, so layers of
    different width weigh the same: a weighted sum with weight 1 / (layers * width) per column,
    a handful of kernels for the whole UNet instead of several per layer (SDXL has 560).
    """
    if weights is None:  # `layer_mean_weights(widths)`, which a caller may keep
        weights = layer_mean_weights(widths, content.device, content.dtype)
    return ((content * style).abs() * weights).sum()
