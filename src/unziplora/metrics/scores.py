"""Scores as pure functions over features (arXiv 2412.04465, Sec. 4, "Evaluation"): mean cosine over all pairs."""

from __future__ import annotations

import torch


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of cos(a_i, b_j) over every (generated i, reference j) pair; inputs L2-normalised (N, D)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a @ b.T).mean())


def evaluate(generated, references, prompts: list[str] | None = None, clip=None, dino=None, csd=None) -> dict[str, float]:
    """The paper's metrics for generated images against reference images (and prompts for CLIP-T).

    CLIP-I and CSD-style measure style alignment, DINO and CSD-content subject alignment,
    CLIP-T text alignment; each only when its model is given.
    """
    scores = {}
    if clip is not None:
        gen = clip.images(generated)
        scores["clip_i"] = mean_pairwise_cosine(gen, clip.images(references))
        if prompts:
            scores["clip_t"] = float((gen * clip.texts(prompts)).sum(-1).mean()) if len(prompts) == len(gen) \
                else mean_pairwise_cosine(gen, clip.texts(prompts))
    if dino is not None:
        scores["dino"] = mean_pairwise_cosine(dino.images(generated), dino.images(references))
    if csd is not None:
        (gen_style, gen_content), (ref_style, ref_content) = csd.images(generated), csd.images(references)
        scores["csd_style"] = mean_pairwise_cosine(gen_style, ref_style)
        scores["csd_content"] = mean_pairwise_cosine(gen_content, ref_content)
    return scores
