"""The toy world's stand-in for CSD (style): the palette and the fill family, analytic, no weights.

After the shared segmentation (oracles.py) the style oracle looks only at the background
(the median border colour) and at the subject's interior (fully covered pixels, 1 px away
from its antialiased edge), never at the silhouette itself:

* **Palette.** A fill is a mix of two colours (world.py), so the interior's colours lie
  along one axis; the fill's main colours are the mean colours at each end of that axis
  (the pixels within END_SHARE of its range), or the median colour when the fill is flat.
  ``palette_of`` returns them with the background; ``palette_distance`` compares two
  palettes in plain RGB units.
* **Family.** Each family's fill (fills.py) is laid on the image's own mask as a template,
  over a grid of angles and offsets, and fitted to the interior's position along the colour
  axis by least squares (an affine fit: which end is "primary" does not matter). The best
  R^2 of each family is the structure descriptor; ``classify_style`` takes the best family,
  or "solid" when the fill has no contrast (or only a smooth shading).

``style_similarity`` multiplies a palette term and a family term, so two images score
high only when background, both fill colours and the family agree. The family's angle and
offset are not compared: they are instance detail a generated image may get slightly wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .fills import Frame, fill_field
from .oracles import _as_array, _segment
from .spec import WORLD_SPEC, WorldSpec
from .world import FAMILIES

FLAT_CONTRAST = 16.0  # colour spread (0-255 units) below which a fill counts as flat ...
# ... or when fewer than FAR_FRACTION of its pixels lie FAR_DISTANCE from its median colour: the
# palette puts primary and secondary >= 100 apart, a generator's shading of a flat fill stays closer.
FAR_DISTANCE, FAR_FRACTION = 40.0, 0.03
END_SHARE = 0.12  # fill colours: pixels within this share of the colour axis's range from each end
TRIM = 0.005  # ... whose ends ignore this share of stray pixels
PALETTE_SIGMA = 30.0  # RGB units: the palette term of style_similarity
# The structure term compares family weights, a softmax of the fits at this temperature (R^2
# units): the runner-up family's fit depends on the silhouette, so only the winner may count.
FIT_TEMPERATURE = 0.02
STRUCTURE_SIGMA = 0.5  # the structure term of style_similarity: two different families cost exp(-2)
PATTERNED = tuple(f for f in FAMILIES if f != "solid")
ANGLES_180 = tuple(range(0, 180, 15))  # a fit is sign-free, so 180 degrees cover a 360-degree family
# The template bank: (family, angle, offset) candidates whose best fit scores each family.
TEMPLATES: tuple[tuple[str, float, float], ...] = (
    *(("gradient", a, 0.0) for a in ANGLES_180),
    ("radial", 0.0, 0.0), *(("radial", a, o) for o in (0.5, 1.0) for a in range(0, 360, 45)),
    *(("split", a, 0.0) for a in ANGLES_180),
    *(("bands", a, 0.0) for a in ANGLES_180),
    *(("quadrants", a, 0.0) for a in range(0, 90, 15)),
    ("rim", 0.0, 0.0), ("bullseye", 0.0, 0.0),
)

RGB = tuple[float, float, float]


class Palette(NamedTuple):
    """An image's estimated palette, RGB 0-255: the background and the fill's main colours
    (one when the fill is flat, two otherwise, the larger share of the interior first; none
    when nothing stands on the background)."""

    background: RGB
    fill: tuple[RGB, ...]


@dataclass(frozen=True)
class StyleEmbedding:
    """The palette and, per patterned family (PATTERNED), the best template fit R^2 (0 if flat)."""

    palette: Palette
    flat: bool
    fits: np.ndarray

    @property
    def family_weights(self) -> np.ndarray:
        """How much the image shows each of FAMILIES (sums to 1): solid when flat, else a
        sharp softmax of the patterned families' fits."""
        if self.flat:
            return np.eye(len(FAMILIES))[FAMILIES.index("solid")]
        z = np.exp((self.fits - self.fits.max()) / FIT_TEMPERATURE)
        weights = dict(zip(PATTERNED, z / z.sum()))
        return np.array([weights.get(f, 0.0) for f in FAMILIES])


def _erode(b: np.ndarray) -> np.ndarray:
    """One step of binary erosion with the 3 x 3 square (partly covered diagonal edges go too)."""
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


def _rgb(c) -> RGB:
    return tuple(round(float(v), 1) for v in c)


def _fill_colours(pix: np.ndarray, axis_pos: np.ndarray, flat: bool) -> tuple[RGB, ...]:
    """The fill's main colours: the mean colour at each end of the colour axis (see module doc)."""
    if flat:
        return (_rgb(np.median(pix, axis=0)),)
    lo, hi = np.quantile(axis_pos, [TRIM, 1 - TRIM])
    span = END_SHARE * (hi - lo)
    ends = [axis_pos <= lo + span, axis_pos >= hi - span]
    colours = [pix[e].mean(axis=0) for e in ends]
    # Share of the interior nearer each colour: the larger first (which one is "primary"
    # cannot be read off an image).
    near_first = np.linalg.norm(pix - colours[0], axis=1) <= np.linalg.norm(pix - colours[1], axis=1)
    if near_first.mean() < 0.5:
        colours = colours[::-1]
    return tuple(_rgb(c) for c in colours)


def _fits(signal: np.ndarray, mask: np.ndarray, inner: np.ndarray, spec: WorldSpec) -> np.ndarray:
    """Best R^2 of each patterned family's templates against the interior's colour-axis signal."""
    frame = Frame(mask)
    y = signal[inner] - signal[inner].mean()
    yy = max(float(y @ y), 1e-9)
    best = dict.fromkeys(PATTERNED, 0.0)
    for family, angle, offset in TEMPLATES:
        t = fill_field(family, angle, offset, mask, spec, frame)[inner]
        t = t - t.mean()
        tt = float(t @ t)
        if tt > 1e-9:
            best[family] = max(best[family], float((t @ y) ** 2 / (tt * yy)))
    return np.array([best[f] for f in PATTERNED])


def style_embedding(img, spec: WorldSpec = WORLD_SPEC) -> StyleEmbedding:
    """Palette and family-fit descriptor of an image (see module docstring)."""
    x = _as_array(img)
    bg, m = _segment(x)
    inner = _interior(m)
    if not inner.any():  # nothing on the background: a flat "style" with no fill colours
        return StyleEmbedding(Palette(_rgb(bg), ()), True, np.zeros(len(PATTERNED)))
    pix = x[inner].astype(np.float64)
    centred = pix - pix.mean(axis=0)
    axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]  # the dominant colour axis (sign-free)
    pos = pix @ axis
    lo, hi = np.percentile(pos, [1, 99])
    far = float(np.mean(np.linalg.norm(pix - np.median(pix, axis=0), axis=1) >= FAR_DISTANCE))
    flat = hi - lo < FLAT_CONTRAST or far < FAR_FRACTION
    palette = Palette(_rgb(bg), _fill_colours(pix, pos, flat))
    if flat:
        return StyleEmbedding(palette, True, np.zeros(len(PATTERNED)))
    signal = x.astype(np.float64) @ axis
    return StyleEmbedding(palette, False, _fits(signal, m, inner, spec))


def palette_of(img) -> Palette:
    """The image's background colour and its fill's main colours, RGB 0-255 (see Palette)."""
    return style_embedding(img).palette


def _as_palette(p) -> Palette:
    if isinstance(p, Palette):
        return p
    if isinstance(p, StyleEmbedding):
        return p.palette
    return palette_of(p)


def _colour_set_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance of the best one-to-one matching when both sets have the same size,
    else the symmetric chamfer distance (mean nearest-colour distance, both ways, averaged)."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    if len(a) == len(b) == 2:
        return float(min(d[0, 0] + d[1, 1], d[0, 1] + d[1, 0]) / 2)
    return float((d.min(axis=1).mean() + d.min(axis=0).mean()) / 2)


def _palette_parts(a: Palette, b: Palette) -> tuple[float, float]:
    """(background distance, fill-colour distance) in RGB units. A missing fill (blank image)
    counts as its background colour: a fill that vanished has the background's colour."""
    fa = np.array(a.fill or (a.background,), float)
    fb = np.array(b.fill or (b.background,), float)
    return (float(np.linalg.norm(np.subtract(a.background, b.background))), _colour_set_distance(fa, fb))


def palette_distance(a, b) -> float:
    """How far apart two palettes are, in RGB units (Euclidean, 0-255 per channel, 0 to 441).

    ``a`` and ``b`` are images (any size) or ``Palette``s. The value is the larger of the
    background colours' distance and the fill colours' distance (the mean distance of the best
    matching between the two fills' main colours; a flat fill against a two-colour one uses the
    symmetric nearest-colour distance), so it is small only when both the background and the
    fill colours were kept. Renders of one palette on other subjects and poses score 0-5 (rarely
    up to ~40, when a thin subject hides a ramp's far end); the world's palettes keep their
    colours >= 100 apart, and different palettes score > 40 in 95 % of pairs (median ~180).
    """
    return max(_palette_parts(_as_palette(a), _as_palette(b)))


def style_similarity(a, b, spec: WorldSpec = WORLD_SPEC) -> float:
    """Same-style score in [0, 1]: palette and family agreement, silhouette ignored.

    exp(-(d_bg^2 + d_fill^2) / (2 PALETTE_SIGMA^2) - s / (2 STRUCTURE_SIGMA^2)), where d_bg and
    d_fill are palette_distance's two parts and s = |w_a - w_b|^2 / 2 in [0, 1] compares the
    family weights (1 for two different families).
    """
    ea = a if isinstance(a, StyleEmbedding) else style_embedding(a, spec)
    eb = b if isinstance(b, StyleEmbedding) else style_embedding(b, spec)
    d_bg, d_fill = _palette_parts(ea.palette, eb.palette)
    structure = 0.5 * float(((ea.family_weights - eb.family_weights) ** 2).sum())
    return float(np.exp(-(d_bg**2 + d_fill**2) / (2 * PALETTE_SIGMA**2) - structure / (2 * STRUCTURE_SIGMA**2)))


def classify_style(img, spec: WorldSpec = WORLD_SPEC) -> str:
    """Fill family: "solid" without contrast, else the family whose template fits best."""
    q = img if isinstance(img, StyleEmbedding) else style_embedding(img, spec)
    return "solid" if q.flat else PATTERNED[int(np.argmax(q.fits))]
