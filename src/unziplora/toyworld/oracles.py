"""The toy world's stand-in for DINO (content): analytic, no weights; and the shared segmentation.

Both oracles (this one and the style oracle, style_oracle.py) first resize to 64 x 64 and
segment the subject from the *plain* background the renderer guarantees: the background
colour is the median border colour, and a pixel's foreground-ness is its colour distance
from it (a soft ramp just above the background's noise level, so any fill colour counts
fully; the palette keeps every fill colour far from the background).

**Content** looks only at the silhouette: the soft mask is resampled on a polar grid around
its centroid with radii in units of its RMS radius (translation and scale invariance), and
two grids are compared by normalised cross-correlation maximised over circular shifts in
angle (rotation invariance), raised to the power CONTENT_SHARPNESS so that unrelated shapes
score near 0. Colours and fills never enter, so the score ignores style.

``classify_content`` is the 1-nearest prototype under content similarity, the prototypes
being fresh renders of random instances over the world's *full* ranges with a fixed seed
(built lazily on first use, ~1 s, cached per spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .render import render_array
from .spec import WORLD_SPEC, WorldSpec
from .world import CLASSES, FAMILIES, Style, Subject

SIZE = 64  # analysis resolution
MIN_CONTRAST = 15.0  # colour distance (0-255) from the background that starts to count
N_RINGS, N_ANGLES, RING_MAX = 12, 64, 2.4  # polar silhouette grid (radii in RMS radii)
CONTENT_SHARPNESS = 4  # content score = NCC ** this: unrelated shapes land near 0
N_PROTOTYPES = 24  # per class


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
        # BOX averages when shrinking (no aliasing of hard edges).
        shrink = min(img.size) >= SIZE
        img = img.resize((SIZE, SIZE), Image.BOX if shrink else Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


_EDGE = np.arange(SIZE)
_BORDER_Y = np.concatenate([np.zeros(SIZE, int), np.full(SIZE, SIZE - 1), _EDGE[1:-1], _EDGE[1:-1]])
_BORDER_X = np.concatenate([_EDGE, _EDGE, np.zeros(SIZE - 2, int), np.full(SIZE - 2, SIZE - 1)])
_PLANE = np.stack([np.ones(SIZE * SIZE), *(np.mgrid[:SIZE, :SIZE].reshape(2, -1) / (SIZE - 1) - 0.5)], axis=1)


def _segment(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background colour, soft foreground mask in [0, 1]) of a SIZE x SIZE image.

    The background is a colour plane fitted to the border (least squares, refitted once
    without outliers such as a subject touching the border): a render's is flat, a
    generator's may drift smoothly, and a drift is no subject. Its colour at the centre is
    returned. The threshold adapts to the border's residual noise, not to the foreground's
    colours: a fill with several colours must come out as one solid silhouette whatever the
    contrast between them, or style would leak into content.
    """
    border = x[_BORDER_Y, _BORDER_X]
    design = _PLANE.reshape(SIZE, SIZE, 3)[_BORDER_Y, _BORDER_X]
    keep = np.ones(len(border), bool)
    for _ in range(2):
        coef = np.linalg.lstsq(design[keep], border[keep], rcond=None)[0]
        residual = np.linalg.norm(border - design @ coef, axis=-1)
        keep = residual <= max(2.0 * float(np.median(residual)), MIN_CONTRAST)
    background = (_PLANE @ coef).reshape(SIZE, SIZE, 3)
    d = np.linalg.norm(x - background, axis=-1)
    noise = float(np.percentile(residual[keep], 90))
    thr = max(MIN_CONTRAST, 3.0 * noise)  # a blank image must not "find" a subject
    return coef[0], np.clip((d - thr) / thr, 0.0, 1.0)


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


# -------------------------------------------------------------------- classifiers
def _prototype_renders(seed: int, spec: WorldSpec) -> list[tuple[Subject, Style, np.ndarray]]:
    """N_PROTOTYPES renders per class and per family from the full world, fixed seed.

    Classes and families are paired by independent shuffles so that a prototype set
    never ties a class to a family.
    """
    rng = np.random.default_rng(seed)
    n = N_PROTOTYPES * len(CLASSES)
    cls_order, fam_order = rng.permutation(n) % len(CLASSES), rng.permutation(n) % len(FAMILIES)
    out = []
    for c, f in zip(cls_order, fam_order):
        subject = Subject.sample(rng, cls=CLASSES[c], spec=spec)
        style = Style.sample(rng, family=FAMILIES[f], spec=spec)
        out.append((subject, style, render_array(subject, style, SIZE, int(rng.integers(1 << 30)), spec=spec)))
    return out


@lru_cache(maxsize=4)
def _content_prototypes(spec: WorldSpec) -> tuple[np.ndarray, np.ndarray]:
    protos = _prototype_renders(101, spec)
    spectra = np.stack([content_embedding(img).spectrum for _, _, img in protos])
    return spectra, np.array([CLASSES.index(s.cls) for s, _, _ in protos])


def classify_content(img, spec: WorldSpec = WORLD_SPEC) -> str:
    """Shape class of the subject (1-nearest prototype under content similarity)."""
    spectra, labels = _content_prototypes(spec)
    q = img if isinstance(img, ContentEmbedding) else content_embedding(img)
    return CLASSES[labels[int(np.argmax(_content_scores(q, spectra)))]]
