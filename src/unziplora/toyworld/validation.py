"""How the oracles are validated: ROC AUCs of same-vs-different scores (tests and the world card)."""

from __future__ import annotations

import itertools

import numpy as np


def roc_auc(pos, neg) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney U)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def separation(items, embeddings, same_kind, score) -> tuple[float, float]:
    """Positives: pairs of renders of one item (`embeddings[i]` holds its renders); negatives:
    renders of two items. Returns (AUC over all negatives, AUC over same-kind negatives only)."""
    twins = list(itertools.combinations(range(len(embeddings[0])), 2))
    pos = [score(e[a], e[b]) for e in embeddings for a, b in twins]
    neg, hard = [], []
    for i, j in itertools.combinations(range(len(items)), 2):
        s = score(embeddings[i][0], embeddings[j][1])
        neg.append(s)
        if same_kind(items[i], items[j]):
            hard.append(s)
    return roc_auc(pos, neg), roc_auc(pos, hard)


def leak(n_items: int, triple, embed, score) -> float:
    """AUC of "the other factor is the same" from scores of same-target pairs: `triple(k)` gives
    (reference, a twin sharing the other factor, one not sharing it). ~0.5 = the factor is ignored."""
    same, diff = [], []
    for k in range(n_items):
        ref, twin, other = (embed(img) for img in triple(k))
        same.append(score(ref, twin))
        diff.append(score(ref, other))
    return roc_auc(same, diff)


def classifier_accuracy(subjects, styles, n: int = 96, seed: int = 3) -> tuple[float, float]:
    """(content, style) classifier accuracy on `n` clean renders of random (subject, style) pairs."""
    from .oracles import classify_content
    from .render import render
    from .style_oracle import classify_style

    rng = np.random.default_rng(seed)
    right_cls = right_fam = 0
    for _ in range(n):
        s, t = subjects[rng.integers(len(subjects))], styles[rng.integers(len(styles))]
        img = render(s, t, 64, seed=int(rng.integers(1 << 30)))
        right_cls += classify_content(img) == s.cls
        right_fam += classify_style(img) == t.family
    return right_cls / n, right_fam / n
