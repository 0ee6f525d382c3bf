"""Column importance, column selection and the orthogonality loss: pure tensor functions.

"Column" means one output feature of a linear layer (one row of B in PyTorch's (out, in)
layout), as in ZipLoRA (arXiv 2311.13600) and UnZipLoRA (arXiv 2412.04465, Sec. 3, "Column separation").
"""

from __future__ import annotations

from typing import Sequence

import torch

CONE_THRESHOLD = 1e-5


def cone_score(
    delta_weight: torch.Tensor, delta_grad: torch.Tensor, threshold: float = CONE_THRESHOLD
) -> torch.Tensor:
    """Per-column importance from the "cone" of a low-rank update (arXiv 2412.04465, Sec. 3, "Column separation").

    cone = dW (.) G, the elementwise product of the update dW = B A (out x in) and its
    gradient G = dB A + B dA scaled by the merger vector, as the authors' code forms them
    (the caller builds both; see TwoBranchLoraLinear.cone_scores). A column's score is the
    fraction of its entries with |cone| > threshold (1e-5 in the authors' code).
    Returns a float tensor of shape (out,).
    """
    if delta_weight.shape != delta_grad.shape:
        raise ValueError(f"cone_score: shapes differ, {tuple(delta_weight.shape)} vs {tuple(delta_grad.shape)}")
    cone = delta_weight.float() * delta_grad.float()
    return (cone.abs() > threshold).float().mean(dim=1)


def top_k_columns(scores: torch.Tensor, k: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of exactly min(k, #eligible) columns with the highest scores.

    Deviation from the authors' code (arXiv 2412.04465 public code): they keep columns whose
    score is strictly greater than the k-th largest, which selects fewer than k when scores
    tie (always, for zero-initialised B). We pick exactly k with a stable tie-break: among
    equal scores the lower column index wins.
    """
    if scores.ndim != 1:
        raise ValueError("top_k_columns: scores must be a vector")
    n = scores.numel()
    if eligible is None:
        eligible = torch.ones(n, dtype=torch.bool, device=scores.device)
    ranked = torch.where(eligible, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float))
    order = torch.sort(ranked, descending=True, stable=True).indices
    k = min(max(int(k), 0), int(eligible.sum()))
    chosen = torch.zeros(n, dtype=torch.bool, device=scores.device)
    chosen[order[:k]] = True
    return chosen


def columns_per_refresh(out_features: int, fraction: float) -> int:
    """k = floor(out_features * fraction), as the authors compute it (int(out * 0.1))."""
    return int(out_features * fraction)


def grow_masks(
    content_scores: torch.Tensor | None,
    style_scores: torch.Tensor | None,
    content_mask: torch.Tensor,
    style_mask: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask refresh of one layer (arXiv 2412.04465, Sec. 3, "Column separation").

    A branch whose scores are None trains all columns here (block separation) and keeps its
    mask. Content picks first, then style among the columns content does not hold. Where both
    branches are masked, content also skips the columns style already holds, so the two masks
    stay disjoint (METHOD §2.3; the authors' code lets content take a style column). Masks only
    grow: the new selection is OR-ed into the old mask.
    """
    both_masked = content_scores is not None and style_scores is not None
    if content_scores is not None:
        eligible = ~style_mask if both_masked else None
        content_mask = content_mask | top_k_columns(content_scores, k, eligible)
    if style_scores is not None:
        eligible = ~content_mask if both_masked else None
        style_mask = style_mask | top_k_columns(style_scores, k, eligible)
    return content_mask, style_mask


def orthogonality_loss(content: torch.Tensor, style: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """L_orth = mean over layers of mean_j |m_c[j] M_c[j] * m_s[j] M_s[j]| (arXiv 2412.04465, Sec. 3, "Column separation", orthogonality loss).

    `content` and `style` hold every layer's masked merger vectors (m_c * M_c, m_s * M_s) laid
    end to end, `widths[i]` columns for layer i. The per-layer means are averaged, so layers of
    different width weigh the same: a weighted sum with weight 1 / (layers * width) per column,
    a handful of kernels for the whole UNet instead of several per layer (SDXL has 560).
    """
    if not widths:
        raise ValueError("orthogonality_loss: no layers given")
    sizes = torch.tensor(list(widths), device=content.device)
    weights = torch.repeat_interleave(1.0 / (sizes * len(sizes)), sizes).to(content.dtype)
    return ((content * style).abs() * weights).sum()
