"""The fill families: where a subject shows its primary and where its secondary colour.

``fill_field`` maps a coverage mask (the subject's silhouette, any resolution) to the weight of
the secondary colour at each pixel, 0 = primary, 1 = secondary (ramps in between). Every family
is built from the silhouette's own frame -- its centroid, its RMS radius, quantiles of its area
along a direction or a radius -- so the structure is at the scale of the subject on every shape
and pose. On a 64 px subject (~35-45 px across) the halves, bands and quadrants are >= 10 px
across (>= 2.5 pixels of the embedded model's 16 x 16 latent), the bullseye's rings ~7 px, the
rim ~4.5 px, and the ramps run over >= 10 px. Directions are in the image frame.

The renderer (render.py) calls this on its supersampled silhouette; the style oracle
(style_oracle.py) calls it on an image's segmented mask to fit the families as templates.
"""

from __future__ import annotations

import numpy as np

from .spec import WORLD_SPEC, WorldSpec
from .world import FAMILIES

RIM_MAX_SHARE = 0.45  # the rim never takes more than this share of the subject's depth
RAMP_QUANTILES = (0.05, 0.95)  # gradients saturate on the outer 5 % of area at each end
RADIAL_EDGE_QUANTILE = 0.8  # the radial ramp reaches the secondary at this share of the area
BULLSEYE_EDGE_QUANTILE = 0.97  # the bullseye's radius (ignores a few tip pixels)
BAND_EXTENT = (0.01, 0.99)  # the bands divide the subject's extent between these area quantiles


class Frame:
    """The silhouette's geometry: pixel coordinates around its centroid and its weights."""

    def __init__(self, cover: np.ndarray):
        n_rows, n_cols = cover.shape
        self.weights = np.clip(cover, 0.0, 1.0).astype(np.float64)
        mass = max(self.weights.sum(), 1e-9)
        ys, xs = np.mgrid[:n_rows, :n_cols] + 0.5
        self.cy, self.cx = (self.weights * ys).sum() / mass, (self.weights * xs).sum() / mass
        self.x, self.y = xs - self.cx, self.cy - ys  # y up, as the angle's convention
        self.rms_radius = float(np.sqrt((self.weights * (self.x**2 + self.y**2)).sum() / mass))

    def along(self, angle: float) -> np.ndarray:
        """Signed distance along the direction ``angle`` (degrees, counter-clockwise from +x)."""
        th = np.deg2rad(angle)
        return self.x * np.cos(th) + self.y * np.sin(th)

    def quantiles(self, values: np.ndarray, qs) -> np.ndarray:
        """Area-weighted quantiles of ``values`` over the silhouette."""
        inside = self.weights > 0
        v, w = values[inside], self.weights[inside]
        if v.size == 0:
            return np.zeros(len(qs))
        order = np.argsort(v, kind="stable")
        cum = np.cumsum(w[order])
        return np.interp(np.asarray(qs) * cum[-1], cum - 0.5 * w[order], v[order])


def _ramp(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def depth(binary: np.ndarray) -> np.ndarray:
    """Steps from each inside pixel to the outside, alternating 4- and 8-neighbour erosions
    (an octagonal approximation of the Euclidean distance; 0 outside)."""
    out = np.zeros(binary.shape, np.float64)
    level = binary.copy()
    step = 0
    while level.any():
        out += level
        nxt = level.copy()
        nxt[1:] &= level[:-1]
        nxt[:-1] &= level[1:]
        nxt[:, 1:] &= level[:, :-1]
        nxt[:, :-1] &= level[:, 1:]
        if step % 2:  # the diagonals on every other step
            nxt[1:, 1:] &= level[:-1, :-1]
            nxt[:-1, :-1] &= level[1:, 1:]
            nxt[1:, :-1] &= level[:-1, 1:]
            nxt[:-1, 1:] &= level[1:, :-1]
        level, step = nxt, step + 1
    return out


def fill_field(family: str, angle: float, offset: float, cover: np.ndarray,
               spec: WorldSpec = WORLD_SPEC, frame: Frame | None = None) -> np.ndarray:
    """Weight of the secondary colour (same shape as ``cover``, in [0, 1]) for one family.

    ``cover`` is the silhouette's coverage in [0, 1]; ``frame`` may pass its precomputed
    geometry (the oracle fits many templates on one mask). See world.FAMILY_FILLS.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    f = frame if frame is not None else Frame(cover)
    if family == "solid":
        return np.zeros(cover.shape)
    if family == "gradient":
        u = f.along(angle)
        return _ramp(u, *f.quantiles(u, RAMP_QUANTILES))
    if family == "radial":
        th = np.deg2rad(angle)
        shift = offset * spec.radial_offset * f.rms_radius
        r = np.hypot(f.x - shift * np.cos(th), f.y - shift * np.sin(th))
        return _ramp(r, 0.0, float(f.quantiles(r, [RADIAL_EDGE_QUANTILE])[0]))
    if family == "split":
        u = f.along(angle)
        return (u > f.quantiles(u, [0.5])[0]).astype(np.float64)
    if family == "bands":
        u = f.along(angle)
        lo, hi = f.quantiles(u, BAND_EXTENT)
        return ((u > lo + (hi - lo) / 3) & (u <= hi - (hi - lo) / 3)).astype(np.float64)
    if family == "quadrants":
        u, v = f.along(angle), f.along(angle + 90.0)
        return ((u > f.quantiles(u, [0.5])[0]) ^ (v > f.quantiles(v, [0.5])[0])).astype(np.float64)
    if family == "bullseye":
        r = np.hypot(f.x, f.y) / max(float(f.quantiles(np.hypot(f.x, f.y), [BULLSEYE_EDGE_QUANTILE])[0]), 1e-6)
        return ((r >= 1 / 3) & (r < 2 / 3)).astype(np.float64)
    # rim: the primary within rim_width of the edge, the secondary inside
    d = depth(cover >= 0.5)
    width = min(spec.rim_width * f.rms_radius, RIM_MAX_SHARE * d.max())
    return (d > width).astype(np.float64)
