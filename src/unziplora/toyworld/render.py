"""Render any subject in any style: the subject's silhouette filled with the style.

Pipeline (all vectorised; no per-pixel Python loops):

1. The subject's geometry is a list of polygons in its own frame (unit radius,
   y up) -- filled or cut out -- squashed by ``aspect`` and then posed (shift,
   scale, rotation drawn from the render seed). Pillow rasterises the polygons at
   4x supersampling and box-downsamples them to a soft coverage mask, so even 32 px
   renders keep antialiased, recognisable outlines.
2. The style's fill (fills.py) is computed at 2x supersampling from the silhouette's
   own frame (centroid, radius, area quantiles along the style's image-frame
   direction) and box-downsampled: the weight of the secondary colour against the
   primary at each pixel. It depends on the subject's shape only through that
   frame, so a style looks the same on every subject and pose.
3. Composite over a *plain* background of the style's ``background`` colour. A plain
   background is a deliberate choice: it keeps the ground truth unambiguous (the
   subject is exactly the non-background region) and lets the oracles segment by
   distance from the border colour; the palette guarantees that distance.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from PIL import Image, ImageDraw

from .fills import fill_field
from .spec import WORLD_SPEC, WorldSpec
from .world import Style, Subject

SHAPE_SS = 4  # supersampling for silhouettes (cheap: Pillow rasterises in C)
FILL_SS = 2  # supersampling for fill fields (numpy)
BASE_RADIUS = 0.33  # subject radius as a fraction of the canvas at scale 1

Polygon = np.ndarray  # (N, 2) float, object frame


# --------------------------------------------------------------------------- pose
@dataclass(frozen=True)
class Pose:
    """Nuisance placement of a subject: shift (canvas fractions), scale, rotation (deg)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, spec: WorldSpec = WORLD_SPEC) -> "Pose":
        dx, dy = rng.uniform(-spec.shift, spec.shift, size=2)
        return cls(float(dx), float(dy), float(rng.uniform(*spec.scale_range)),
                   float(rng.uniform(-spec.rotation, spec.rotation)))


# ----------------------------------------------------------------------- geometry
def _ellipse(cx: float, cy: float, r: float, n: int = 96) -> Polygon:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _round_convex(poly: Polygon, r: float, n_arc: int = 10) -> Polygon:
    """Replace each corner of a convex CCW polygon by a circular arc of radius ``r``."""
    if r <= 1e-3:
        return poly
    out = []
    n = len(poly)
    for i in range(n):  # loops over a handful of corners, not pixels
        p, prev, nxt = poly[i], poly[i - 1], poly[(i + 1) % n]
        u, v = prev - p, nxt - p
        lu, lv = np.linalg.norm(u), np.linalg.norm(v)
        u, v = u / lu, v / lv
        half = np.arccos(np.clip(u @ v, -1.0, 1.0)) / 2
        # Never let the tangent points run past the middle of an edge.
        rr = min(r, 0.5 * min(lu, lv) * np.tan(half))
        centre = p + (u + v) / np.linalg.norm(u + v) * rr / np.sin(half)
        t0 = p + u * rr / np.tan(half) - centre
        t1 = p + v * rr / np.tan(half) - centre
        a0, a1 = np.arctan2(t0[1], t0[0]), np.arctan2(t1[1], t1[0])
        a1 = a0 + (a1 - a0) % (2 * np.pi)  # CCW sweep from the incoming tangent
        ang = np.linspace(a0, a1, n_arc)
        out.append(centre + rr * np.stack([np.cos(ang), np.sin(ang)], axis=1))
    return np.concatenate(out)


def _circle(a: float, b: float) -> list[tuple[Polygon, int]]:
    parts = [(_ellipse(0, 0, 1.0), 1)]
    hole = 0.62 * a
    if hole > 0.03:
        off = b * max(0.0, 1.0 - hole - 0.18)  # the ring always stays closed
        parts.append((_ellipse(off, 0, hole), 0))
    return parts


def _square(a: float, b: float) -> list[tuple[Polygon, int]]:
    h, top = 0.78, 0.78 * (1 - 0.45 * b)
    quad = np.array([[-h, -h], [h, -h], [top, h], [-top, h]])
    return [(_round_convex(quad, 0.4 * h * a), 1)]


def _triangle(a: float, b: float) -> list[tuple[Polygon, int]]:
    tri = np.array([[-1.0, -0.7], [1.0, -0.7], [(a - 0.5) * 1.4, 1.0]])
    return [(_round_convex(tri, 0.25 * b), 1)]


def _star(a: float, b: float) -> list[tuple[Polygon, int]]:
    n = 5 + min(3, int(b * 4))
    ang = np.pi / 2 + np.arange(2 * n) * np.pi / n
    rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, 0.3 + 0.35 * a)
    return [(np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1), 1)]


def _heart(a: float, b: float) -> list[tuple[Polygon, int]]:
    t = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - (3.5 + 3.0 * a) * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    y = np.where(y < 0, y * (0.85 + 0.4 * b), y)  # longer or shorter tip
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return [(pts / np.abs(pts).max(), 1)]


def _cross(a: float, b: float) -> list[tuple[Polygon, int]]:
    t, c, h = 0.16 + 0.2 * a, 0.45 * b, 1.0 - 0.3 * b
    return [(_rect(-t, -1.0, t, 1.0), 1), (_rect(-h, c - t, h, c + t), 1)]


def _crescent(a: float, b: float) -> list[tuple[Polygon, int]]:
    return [(_ellipse(0, 0, 1.0), 1), (_ellipse(0.4 + 0.45 * a, 0.0, 0.72 + 0.2 * b), 0)]


def _arrow(a: float, b: float) -> list[tuple[Polygon, int]]:
    st, hl = 0.12 + 0.14 * b, 0.75
    hw = max(st + 0.15, 0.38 + 0.3 * a)
    x = 1.0 - hl
    pts = [[-1, -st], [x, -st], [x, -hw], [1, 0], [x, hw], [x, st], [-1, st]]
    return [(np.array(pts, dtype=float), 1)]


_SHAPES = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
    "heart": _heart, "cross": _cross, "crescent": _crescent, "arrow": _arrow,
}


def subject_polygons(subject: Subject) -> list[tuple[Polygon, int]]:
    """The subject's (polygon, fill) parts in its own frame, aspect applied, unposed."""
    parts = _SHAPES[subject.cls](subject.a, subject.b)
    return [(p * np.array([1.0, subject.aspect]), fill) for p, fill in parts]


def _silhouette(subject: Subject, pose: Pose, size: int) -> tuple[np.ndarray, Image.Image]:
    """Soft coverage mask (size x size, [0, 1]) and the supersampled binary mask."""
    hi = size * SHAPE_SS
    th = np.deg2rad(pose.rotation)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    radius = BASE_RADIUS * pose.scale * hi
    centre = np.array([(0.5 + pose.dx) * hi, (0.5 + pose.dy) * hi])
    canvas = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in subject_polygons(subject):
        xy = poly @ rot.T * radius * np.array([1.0, -1.0]) + centre  # y up -> image rows
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 * fill)
    cover = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    return cover, canvas


def _downsample(x: np.ndarray, f: int) -> np.ndarray:
    n = x.shape[0] // f
    return x.reshape(n, f, n, f).mean(axis=(1, 3))


# ------------------------------------------------------------------------- render
def render_array(subject: Subject, style: Style, size: int = 64, seed: int = 0, pose: Pose | None = None,
                 spec: WorldSpec = WORLD_SPEC) -> np.ndarray:
    """Like :func:`render` but returns an ``(size, size, 3)`` uint8 array."""
    rng = np.random.default_rng([int(seed), 0x70F])
    if pose is None:
        pose = Pose.sample(rng.spawn(1)[0], spec)
    cover, hi_mask = _silhouette(subject, pose, size)
    n = size * FILL_SS
    fine = np.asarray(hi_mask.resize((n, n), Image.BOX), dtype=np.float64) / 255.0
    t = _downsample(fill_field(style.family, style.angle, style.offset, fine, spec), FILL_SS)[..., None]
    bg, primary, secondary = (np.asarray(c, np.float64) for c in style.palette)
    fill = primary + t * (secondary - primary)
    img = bg + cover[..., None] * (fill - bg)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(subject: Subject, style: Style, size: int = 64, seed: int = 0, pose: Pose | None = None,
           spec: WorldSpec = WORLD_SPEC) -> Image.Image:
    """Render ``subject`` in ``style`` as a ``size`` x ``size`` RGB image.

    Deterministic in ``(subject, style, size, seed)``. The seed draws the pose (unless
    ``pose`` is given, e.g. ``Pose()`` for the canonical placement) from the spec's ranges;
    the same seed gives the same pose for any subject and style.
    """
    return Image.fromarray(render_array(subject, style, size, seed, pose, spec))
