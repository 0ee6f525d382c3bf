"""The toy world's stand-ins for DINO (content) and CSD (style): analytic, no weights.

Both oracles first resize to 64 x 64 and segment the subject from the *plain*
background the renderer guarantees: the background colour is the median border
colour, and a pixel's foreground-ness is its colour distance from it (a soft
ramp just above the background's noise level, so any fill colour counts fully).

* **Content** looks only at the silhouette: the soft mask is resampled on a polar
  grid around its centroid with radii in units of its RMS radius (translation and
  scale invariance), and two grids are compared by normalised cross-correlation
  maximised over circular shifts in angle (rotation invariance), raised to the
  power CONTENT_SHARPNESS so that unrelated shapes score near 0. Colours and
  patterns never enter, so the score ignores style.
* **Style** looks only at colours and texture inside the subject (1 px away from
  its antialiased edge): (i) the palette, as the background colour plus the
  distribution of interior colours (Gaussian-kernel MMD), and (ii) the texture, as
  the variogram of the interior's dominant colour axis over pixel pairs that both
  lie inside, compared only on lags both images support -- so the silhouette does
  not leak in. Pattern orientation is part of a style, so similarity keeps it.

Classifiers use prototypes from fresh renders of random instances over the *full*
parameter ranges, with fixed seeds (built lazily on first use, ~2 s, cached):
``classify_content`` is 1-nearest prototype under content similarity;
``classify_style`` calls a fill "solid" when it has no contrast (or only a smooth shading), and otherwise
takes the nearest family centroid of a few rotation-invariant texture statistics
(Mahalanobis distance, covariance pooled over the prototypes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .render import render_array
from .world import CLASSES, FAMILIES, Style, Subject

SIZE = 64  # analysis resolution
MIN_CONTRAST = 15.0  # colour distance (0-255) from the background that starts to count
N_RINGS, N_ANGLES, RING_MAX = 12, 64, 2.4  # polar silhouette grid (radii in RMS radii)
LAG = 16  # texture window: lags in [-16, 16] px at 64 px
MIN_PAIRS = 100  # fewer interior pixel pairs than this: the lag is too noisy to use
FLAT_CONTRAST = 16.0  # colour spread (0-255 units) below which a fill counts as flat
# ... or when fewer than FAR_FRACTION of its pixels lie FAR_DISTANCE from its median colour: the
# palette puts fg and pattern >= 90 apart, while a generator's shading of a flat fill stays closer.
FAR_DISTANCE, FAR_FRACTION = 40.0, 0.03
EDGE_DEPTH = 6  # edge-profile rings (px)
N_STATS = 6 + EDGE_DEPTH  # texture statistics used by the family classifier
COLOUR_STEP = 8  # quantisation step for interior colour distributions
COLOUR_CAP = 0.05  # colour frequencies are capped here before comparing palettes
COLOUR_SIGMA, BG_SIGMA = 30.0, 40.0  # kernel widths (0-255 units)
TEXTURE_SIGMA, PALETTE_TAU = 25.0, 0.15  # style similarity temperatures
CONTENT_SHARPNESS = 4  # content score = NCC ** this: unrelated shapes land near 0
N_PROTOTYPES = 24  # per class / family
SHRINK = 0.1  # covariance shrinkage of the family classifier (standardised units)


# ------------------------------------------------------------------ preprocessing
def _as_array(img) -> np.ndarray:
    """PIL image or HxWx3(4) uint8 array of any size -> SIZE x SIZE x 3 float32."""
    if not isinstance(img, Image.Image):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 array, got shape {arr.shape}")
        img = Image.fromarray(np.clip(arr[..., :3], 0, 255).astype(np.uint8))
    img = img.convert("RGB")
    if img.size != (SIZE, SIZE):
        # BOX averages when shrinking (no aliasing of fine patterns).
        shrink = min(img.size) >= SIZE
        img = img.resize((SIZE, SIZE), Image.BOX if shrink else Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _segment(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background colour, soft foreground mask in [0, 1]) of a SIZE x SIZE image.

    The threshold adapts to the background's own noise, not to the foreground's
    colours: a fill with several colours (a pattern) must come out as one solid
    silhouette whatever the contrast between them, or style would leak into content.
    """
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    bg = np.median(border, axis=0)
    d = np.linalg.norm(x - bg, axis=-1)
    noise = float(np.percentile(np.linalg.norm(border - bg, axis=-1), 90))
    thr = max(MIN_CONTRAST, 3.0 * noise)  # a blank image must not "find" a subject
    return bg, np.clip((d - thr) / thr, 0.0, 1.0)


def foreground_mask(img) -> np.ndarray:
    """Soft 64 x 64 foreground mask in [0, 1] (the subject's silhouette)."""
    return _segment(_as_array(img))[1]


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``img`` at float pixel coordinates; zero outside."""
    pad = np.pad(img, 1)
    y = np.clip(y + 1, 0, pad.shape[0] - 1.001)
    x = np.clip(x + 1, 0, pad.shape[1] - 1.001)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    return (pad[y0, x0] * (1 - fy) * (1 - fx) + pad[y0 + 1, x0] * fy * (1 - fx)
            + pad[y0, x0 + 1] * (1 - fy) * fx + pad[y0 + 1, x0 + 1] * fy * fx)


# ------------------------------------------------------------------------ content
@dataclass(frozen=True)
class ContentEmbedding:
    """Zero-mean, unit-norm polar silhouette grid (rings x angles) and its angular FFT."""

    polar: np.ndarray
    spectrum: np.ndarray


def content_embedding(img) -> ContentEmbedding:
    """Pose-normalised silhouette descriptor of an image (see module docstring)."""
    m = foreground_mask(img)
    mass = m.sum()
    polar = np.zeros((N_RINGS, N_ANGLES))
    if mass >= 4.0:
        ys, xs = np.mgrid[:SIZE, :SIZE]
        cy, cx = (m * ys).sum() / mass, (m * xs).sum() / mass
        rms = np.sqrt((m * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum() / mass)
        frac = (np.arange(N_RINGS) + 0.5) / N_RINGS
        th = np.arange(N_ANGLES) * 2 * np.pi / N_ANGLES
        r = frac[:, None] * RING_MAX * max(rms, 1.0)
        polar = _bilinear(m, cy + r * np.sin(th), cx + r * np.cos(th))
        polar = polar * np.sqrt(frac)[:, None]  # area element: outer rings cover more
        polar = polar - polar.mean()
        polar = polar / max(np.linalg.norm(polar), 1e-8)
    return ContentEmbedding(polar, np.fft.rfft(polar, axis=1))


def _content_scores(q: ContentEmbedding, spectra: np.ndarray) -> np.ndarray:
    """Max-over-rotation normalised cross-correlation of q against a stack of spectra."""
    cc = np.fft.irfft((np.conj(q.spectrum) * spectra).sum(axis=-2), n=N_ANGLES, axis=-1)
    return np.clip(cc.max(axis=-1), 0.0, 1.0) ** CONTENT_SHARPNESS


def content_similarity(a, b) -> float:
    """Same-subject score in [0, 1]: 1 = identical silhouette up to shift/scale/rotation."""
    ea = a if isinstance(a, ContentEmbedding) else content_embedding(a)
    eb = b if isinstance(b, ContentEmbedding) else content_embedding(b)
    return float(_content_scores(ea, eb.spectrum[None])[0])


# -------------------------------------------------------------------------- style
@dataclass(frozen=True)
class StyleEmbedding:
    """Background colour, interior colour distribution, texture variogram and stats."""

    bg: np.ndarray  # (3,)
    colours: np.ndarray  # (K, 3) quantised interior colours
    weights: np.ndarray  # (K,) their frequencies, capped at COLOUR_CAP and renormalised
    contrast: float  # colour spread of the fill along its dominant axis (0 = flat)
    far_fraction: float  # share of interior pixels FAR_DISTANCE or more from their median colour
    gamma: np.ndarray  # (2L+1, 2L+1) root variogram of the fill, colour units
    pairs: np.ndarray  # (2L+1, 2L+1) interior pixel pairs behind each lag (0 = unusable)
    stats: np.ndarray  # rotation-invariant texture statistics (see _texture_stats)


def _erode(b: np.ndarray) -> np.ndarray:
    """One step of binary erosion with the 3 x 3 square (separable: rows, then columns).

    The square, not the 4-neighbourhood, so that partly covered pixels along
    diagonal edges are removed too."""
    out = b.copy()
    out[1:] &= b[:-1]
    out[:-1] &= b[1:]
    rows = out.copy()
    out[:, 1:] &= rows[:, :-1]
    out[:, :-1] &= rows[:, 1:]
    return out


def _interior(m: np.ndarray) -> np.ndarray:
    """Pixels well inside the subject: fully covered and not touching the edge."""
    inner = _erode(m >= 0.999)
    return inner if inner.sum() >= 16 else m >= 0.5


def _masked_variogram(s: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root variogram sqrt(E[(s(x+d) - s(x))^2] / 2) over pixel pairs inside ``mask``.

    A variogram, unlike a z-scored autocorrelation, needs no estimate of the mean or
    variance over the region, so it does not change with the silhouette's size or
    extent (a linear ramp gives |g . d| whatever the shape). Computed with FFT
    cross-correlations: sum M M'(s' - s)^2 = C(M, Ms^2) + C(Ms^2, M) - 2 C(Ms, Ms).
    """
    n = 2 * SIZE
    m = mask.astype(float)
    s = (s - s[mask].mean()) * m
    fm, fs, fq = (np.fft.rfft2(a, s=(n, n)) for a in (m, s, s * s))

    def corr(fx, fy):
        return np.fft.irfft2(np.conj(fx) * fy, s=(n, n))

    pairs = np.rint(corr(fm, fm))
    sq = corr(fm, fq) + corr(fq, fm) - 2 * corr(fs, fs)
    ok = pairs >= MIN_PAIRS
    gamma = np.where(ok, np.sqrt(np.maximum(sq, 0.0) / (2 * np.maximum(pairs, 1.0))), 0.0)
    idx = np.arange(-LAG, LAG + 1) % n
    window = np.ix_(idx, idx)
    return gamma[window], np.where(ok, pairs, 0.0)[window]


def _edge_offsets(s: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Mean of s in each of the first EDGE_DEPTH 1-px rings inside the silhouette,
    minus the mean deeper in (NaN for rings a thin subject lacks).

    An outline is exactly such a step near the edge whatever the shape; other fills
    give offsets near 0. (Used to classify, not to compare styles: for gradients the
    offsets depend on the silhouette.)
    """
    levels = [inner]
    for _ in range(EDGE_DEPTH):
        levels.append(_erode(levels[-1]))
    offsets = np.full(EDGE_DEPTH, np.nan)
    ref = next((lv for lv in reversed(levels) if lv.sum() >= 8), None)
    if ref is None:
        return offsets
    for k in range(EDGE_DEPTH):
        ring = levels[k] & ~levels[k + 1]
        if ring.sum() >= 4 and not (ref & ring).any():
            offsets[k] = s[ring].mean() - s[ref].mean()
    return offsets


_LAG_R = np.hypot(*np.mgrid[-LAG:LAG + 1, -LAG:LAG + 1])


def _texture_stats(s: np.ndarray, inner: np.ndarray, gamma: np.ndarray, pairs: np.ndarray,
                   lo: float, spread: float) -> np.ndarray:
    """Rotation-invariant statistics that tell pattern families apart on any silhouette.

    mid fraction (ramps have many in-between values, two-colour fills few), minority
    colour fraction, coherence of edge orientations in doubled / quadrupled angle
    (stripes: one orientation; zigzag: two at +-27 deg; checker: two at 90 deg;
    dots / noise: none), periodicity (a lattice brings the variogram back to ~0 at
    some lag; noise never does), variogram level, and the edge profile (outline).
    """
    t = (s[inner] - lo) / spread
    p = float(np.mean(t > 0.5))
    gy, gx = np.gradient(s)
    core = _erode(inner)  # gradients only where both neighbours are interior
    w, th = (gx**2 + gy**2)[core], np.arctan2(gy, gx)[core]
    total = w.sum() + 1e-9
    h1, h2 = (abs((w * np.exp(1j * k * th)).sum()) / total for k in (2, 4))
    g, valid = gamma / spread, pairs > 0
    near = valid & (_LAG_R >= 2)
    sill = float(np.sqrt(np.mean(g[near] ** 2))) if near.any() else 0.0
    far = valid & (_LAG_R >= 3)
    period = float(g[far].min() / max(sill, 1e-3)) if far.any() else 1.0
    head = [np.mean((t > 0.2) & (t < 0.8)), min(p, 1 - p), h1, h2, period, sill]
    edge = np.nan_to_num(np.abs(_edge_offsets(s, inner)))
    return np.concatenate([head, edge / spread])


def style_embedding(img) -> StyleEmbedding:
    """Palette + texture descriptor of an image (see module docstring)."""
    x = _as_array(img)
    bg, m = _segment(x)
    inner = _interior(m)
    if not inner.any():  # nothing on the background: a flat "style" with no colours
        lags = np.zeros((2 * LAG + 1, 2 * LAG + 1))
        return StyleEmbedding(bg, np.zeros((0, 3)), np.zeros(0), 0.0, 0.0, lags, lags, np.zeros(N_STATS))
    pix = x[inner]
    far = float(np.mean(np.linalg.norm(pix - np.median(pix, axis=0), axis=1) >= FAR_DISTANCE))
    q, counts = np.unique((pix // COLOUR_STEP).astype(int), axis=0, return_counts=True)
    # Capped frequencies: which colours a fill uses is style, but how much of each a
    # silhouette shows (an outline's band vs interior) partly depends on the shape.
    presence = np.minimum(counts / counts.sum(), COLOUR_CAP)
    # Texture signal: projection on the interior's dominant colour axis (its sign is
    # irrelevant to a variogram); flat fills give a near-zero variogram.
    centred = pix - pix.mean(axis=0)
    signal = x @ np.linalg.eigh(centred.T @ centred)[1][:, -1]
    gamma, pairs = _masked_variogram(signal, inner)
    lo, hi = np.percentile(signal[inner], [1, 99])
    spread = max(float(hi - lo), FLAT_CONTRAST)  # flat fills stay near 0, not blown up
    stats = _texture_stats(signal, inner, gamma, pairs, float(lo), spread)
    return StyleEmbedding(bg, (q + 0.5) * COLOUR_STEP, presence / presence.sum(), float(hi - lo), far,
                          gamma, pairs, stats)


def _kernel_mean(c1, w1, c2, w2) -> float:
    d2 = ((c1[:, None, :] - c2[None, :, :]) ** 2).sum(-1)
    return float(w1 @ np.exp(-d2 / (2 * COLOUR_SIGMA**2)) @ w2)


def _palette_distance(a: StyleEmbedding, b: StyleEmbedding) -> float:
    """Squared MMD between interior colour distributions plus background distance."""
    mmd2 = (_kernel_mean(a.colours, a.weights, a.colours, a.weights)
            + _kernel_mean(b.colours, b.weights, b.colours, b.weights)
            - 2 * _kernel_mean(a.colours, a.weights, b.colours, b.weights))
    bg2 = float(((a.bg - b.bg) ** 2).sum()) / (2 * BG_SIGMA**2)
    return max(mmd2, 0.0) / PALETTE_TAU + bg2


def _texture_distance(a: StyleEmbedding, b: StyleEmbedding) -> float:
    """Mean squared gamma difference over lags both images support, pair-weighted:
    which lags a silhouette supports is content, so unsupported lags must not count."""
    w = np.minimum(a.pairs, b.pairs)
    if w.sum() <= 0:
        return 0.0
    return float((w * (a.gamma - b.gamma) ** 2).sum() / w.sum()) / (2 * TEXTURE_SIGMA**2)


def style_similarity(a, b) -> float:
    """Same-style score in [0, 1]: palette and texture agreement, silhouette ignored."""
    ea = a if isinstance(a, StyleEmbedding) else style_embedding(a)
    eb = b if isinstance(b, StyleEmbedding) else style_embedding(b)
    return float(np.exp(-0.5 * (_palette_distance(ea, eb) + _texture_distance(ea, eb))))


# -------------------------------------------------------------------- classifiers
def _prototype_renders(seed: int) -> list[tuple[Subject, Style, np.ndarray]]:
    """N_PROTOTYPES renders per class and per family from the full world, fixed seed.

    Classes and families are paired by independent shuffles so that a prototype set
    never ties a class to a family.
    """
    rng = np.random.default_rng(seed)
    n = N_PROTOTYPES * len(CLASSES)
    cls_order, fam_order = rng.permutation(n) % len(CLASSES), rng.permutation(n) % len(FAMILIES)
    out = []
    for c, f in zip(cls_order, fam_order):
        subject = Subject.sample(rng, cls=CLASSES[c])
        style = Style.sample(rng, family=FAMILIES[f])
        out.append((subject, style, render_array(subject, style, SIZE, int(rng.integers(1 << 30)))))
    return out


@lru_cache(maxsize=1)
def _content_prototypes() -> tuple[np.ndarray, np.ndarray]:
    protos = _prototype_renders(101)
    spectra = np.stack([content_embedding(img).spectrum for _, _, img in protos])
    return spectra, np.array([CLASSES.index(s.cls) for s, _, _ in protos])


def _is_flat(e: StyleEmbedding) -> bool:
    """No contrast at all, or only a smooth shading: a VAE never decodes a flat fill exactly flat."""
    return e.contrast < FLAT_CONTRAST or e.far_fraction < FAR_FRACTION


@lru_cache(maxsize=1)
def _family_model() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Standardisation, family centroids and pooled inverse covariance of the stats."""
    stats, labels = [], []
    for seed in (202, 203):  # two prototype sets: the centroids need ~40 per family
        for _, style, img in _prototype_renders(seed):
            e = style_embedding(img)
            # "solid" is decided by contrast alone; a patterned style on a thin
            # subject can show no pattern at all and would only blur the centroids.
            if style.family != "solid" and not _is_flat(e):
                stats.append(e.stats)
                labels.append(style.family)
    x, y = np.stack(stats), np.array(labels)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mu) / sd
    names = [f for f in FAMILIES if f != "solid"]
    centroids = np.stack([z[y == f].mean(axis=0) for f in names])
    resid = z - centroids[[names.index(f) for f in y]]
    icov = np.linalg.inv(np.cov(resid.T) + SHRINK * np.eye(z.shape[1]))
    return mu, sd, centroids, icov, names


def classify_content(img) -> str:
    """Shape class of the subject (1-nearest prototype under content similarity)."""
    spectra, labels = _content_prototypes()
    q = img if isinstance(img, ContentEmbedding) else content_embedding(img)
    return CLASSES[labels[int(np.argmax(_content_scores(q, spectra)))]]


def classify_style(img) -> str:
    """Pattern family of the fill: "solid" without contrast, else nearest centroid."""
    q = img if isinstance(img, StyleEmbedding) else style_embedding(img)
    if _is_flat(q):
        return "solid"
    mu, sd, centroids, icov, names = _family_model()
    diff = (q.stats - mu) / sd - centroids
    return names[int(np.argmin(np.einsum("fd,de,fe->f", diff, icov, diff)))]
