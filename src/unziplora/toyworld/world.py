"""The toy world's factors: subjects (content) and styles, plus its caption vocabulary.

A *subject* is a shape class plus instance parameters that make one subject distinct
inside its class (the toy analogue of "this particular dog"). A *style* is a palette
(background, primary and secondary colours) plus a fill family with its instance
parameters (the analogue of "this particular watercolour"). Every fill's structure is at
the scale of the subject (see FAMILY_FILLS), so a small latent can hold it. Both are
frozen, hashable, JSON-serialisable dataclasses with a stable short ``id``; everything
random is drawn from a caller-supplied ``numpy.random.Generator`` so the world is
deterministic by seed, and every range comes from a ``WorldSpec`` (spec.py).

Pose (position, scale, rotation) is deliberately *not* part of a subject: it is
nuisance variation drawn at render time from the render seed (see ``render.py``).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from .spec import WORLD_SPEC, WorldSpec

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "crescent", "arrow",
)
FAMILIES: tuple[str, ...] = (
    "solid", "gradient", "radial", "split", "rim", "bands", "bullseye", "quadrants",
)

# What the class-specific instance parameters ``a`` and ``b`` (both in [0, 1]) mean;
# the geometry lives in render.py, this table is the documentation.
SUBJECT_PARAMS: dict[str, tuple[str, str]] = {
    "circle": ("hole radius (0 = disk, 1 = thin ring)", "hole offset (concentric -> eccentric)"),
    "square": ("corner rounding", "taper (square -> trapezoid)"),
    "triangle": ("apex position (left -> right)", "corner rounding"),
    "star": ("inner/outer radius ratio (spiky -> fat)", "point count 5..8"),
    "heart": ("lobe fullness / cleft depth", "tip length"),
    "cross": ("arm thickness", "crossbar height (Greek -> Latin cross)"),
    "crescent": ("bite offset (thin -> thick)", "bite radius"),
    "arrow": ("head width", "shaft thickness"),
}
# How each family lays the primary and secondary colours over the silhouette (fills.py draws
# them). Directions are in the image frame (the fill does not turn with the subject: pose is
# content); cuts follow the subject's own area and extent, so every part shows on any shape.
FAMILY_FILLS: dict[str, str] = {
    "solid": "primary only",
    "gradient": "linear ramp primary -> secondary across the subject along `angle`",
    "radial": "ramp from a primary centre (moved by `offset` towards `angle`) to a secondary edge",
    "split": "two halves of equal area along `angle`: primary, then secondary (a hard cut)",
    "rim": "a primary rim (~30 % of the subject's RMS radius) around a secondary interior",
    "bands": "three bands of equal width along `angle`: primary, secondary, primary",
    "bullseye": "three rings around the centroid: primary disc, secondary ring, primary ring",
    "quadrants": "four cells of two perpendicular equal-area cuts (one along `angle`), alternating colours",
}

RARE_TOKENS: tuple[str, ...] = ("monadikos", "sks", "zwx", "ohwx", "vkd", "tyq")
_CAPTION_WORDS = ("a", "in", "style")
WORLD_WORDS: tuple[str, ...] = tuple(
    sorted(set(_CAPTION_WORDS) | set(CLASSES) | set(FAMILIES) | set(RARE_TOKENS))
)

RGB = tuple[int, int, int]


def _stable_id(prefix: str, payload: dict) -> str:
    """Short content hash: same parameters -> same id across runs and machines."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return prefix + hashlib.sha1(blob).hexdigest()[:10]


def _r4(x: float) -> float:
    # Rounded parameters keep dicts/ids readable and make JSON round trips exact.
    return round(float(x), 4)


def _check_unit(name: str, value: float, lo: float = 0.0, hi: float = 1.0) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} outside [{lo}, {hi}]")


class _Serialisable:
    """to_dict / from_dict / id shared by Subject and Style."""

    _ID_PREFIX = ""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def id(self) -> str:
        return _stable_id(self._ID_PREFIX, self.to_dict())

    def _plain_floats(self, *names: str) -> None:
        # numpy scalars in, Python floats stored: JSON-safe and equal to their round trip.
        for name in names:
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class Subject(_Serialisable):
    """One subject: a shape class plus its instance parameters (see SUBJECT_PARAMS)."""

    cls: str
    a: float = 0.3  # defaults lie in the seen (pretraining) ranges
    b: float = 0.5
    aspect: float = 1.0

    _ID_PREFIX = "c"

    def __post_init__(self) -> None:
        if self.cls not in CLASSES:
            raise ValueError(f"unknown class {self.cls!r}; expected one of {CLASSES}")
        self._plain_floats("a", "b", "aspect")
        _check_unit("a", self.a)
        _check_unit("b", self.b)
        _check_unit("aspect", self.aspect, 0.05, 1.0)

    @classmethod
    def sample(klass, rng: np.random.Generator, cls: str | None = None, spec: WorldSpec = WORLD_SPEC) -> "Subject":
        """A random instance over the *full* parameter ranges (split.py restricts them)."""
        # The class is always drawn (even when given) so that fixing ``cls`` does not
        # shift the random stream of the remaining parameters.
        drawn = CLASSES[rng.integers(len(CLASSES))]
        a, b = rng.uniform(0.0, 1.0, size=2)
        aspect = rng.uniform(*spec.aspect_range)
        return klass(cls if cls is not None else drawn, _r4(a), _r4(b), _r4(aspect))


def _hsv(h_deg: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def hue_of(rgb: RGB) -> float:
    """Hue in degrees [0, 360) of an RGB colour (used by the split's palette bands)."""
    h, _, _ = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    return h * 360.0


def _dist(p: RGB, q: RGB) -> float:
    return float(np.linalg.norm(np.subtract(p, q, dtype=float)))


def mix_distance(background: RGB, primary: RGB, secondary: RGB) -> float:
    """Distance from ``background`` to the nearest mix of primary and secondary (the segment
    between them in RGB): every colour a fill can show, gradients and soft edges included."""
    p, q, x = (np.asarray(c, float) for c in (primary, secondary, background))
    d = q - p
    t = np.clip((x - p) @ d / max(d @ d, 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(p + t * d - x))


def _background(rng: np.random.Generator, spec: WorldSpec) -> RGB:
    """Light (paper), dark or coloured, with the spec's probabilities; the same draws each time."""
    kind = rng.choice(3, p=np.asarray(spec.background_weights) / sum(spec.background_weights))
    h, s, v = rng.uniform(0.0, 360.0), rng.uniform(), rng.uniform()
    if kind == 0:
        return _hsv(h, 0.25 * s, 0.85 + 0.15 * v)
    if kind == 1:
        return _hsv(h, 0.5 * s, 0.04 + 0.18 * v)
    return _hsv(h, 0.4 + 0.5 * s, 0.35 + 0.5 * v)


def sample_palette(rng: np.random.Generator, primary_hue: float | None = None,
                   spec: WorldSpec = WORLD_SPEC) -> tuple[RGB, RGB, RGB]:
    """(background, primary, secondary) with the spec's guaranteed contrasts.

    The background stays ``min_background_contrast`` from every mix of the two fill colours
    (the oracles segment the subject by distance from the border colour, and a gradient shows
    every mix); primary and secondary stay ``min_fill_contrast`` apart so each family's structure
    is visible. The secondary may be any colour, greys, white and black included. Rejection
    sampling keeps it simple and deterministic; ``primary_hue`` pins the primary's hue.
    """
    for _ in range(1000):
        background = _background(rng, spec)
        h = rng.uniform(0.0, 360.0)
        primary = _hsv(h if primary_hue is None else primary_hue,
                       rng.uniform(*spec.primary_saturation), rng.uniform(*spec.primary_value))
        secondary = _hsv(rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0))
        if (_dist(primary, secondary) >= spec.min_fill_contrast
                and mix_distance(background, primary, secondary) >= spec.min_background_contrast):
            return background, primary, secondary
    raise RuntimeError("palette sampling failed; primary_hue or the spec's contrasts may be unsatisfiable")


@dataclass(frozen=True)
class Style(_Serialisable):
    """One style: a fill family, its instance parameters and a palette.

    ``angle`` (degrees, image frame, counter-clockwise from +x) orients the directional
    families, ``offset`` (0-1) moves the radial family's centre; each family ignores what it
    does not use (see FAMILY_FILLS). ``background`` is the plain canvas, ``primary`` and
    ``secondary`` are the fill's two colours.
    """

    family: str
    angle: float = 30.0
    offset: float = 0.5
    background: RGB = (245, 245, 240)
    primary: RGB = (200, 60, 60)  # defaults lie in the seen (pretraining) palette region
    secondary: RGB = (40, 40, 160)

    _ID_PREFIX = "s"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        self._plain_floats("angle", "offset")
        if not 0.0 <= self.angle < 360.0:
            raise ValueError(f"angle={self.angle} outside [0, 360)")
        _check_unit("offset", self.offset)
        for name in ("background", "primary", "secondary"):
            col = tuple(int(c) for c in getattr(self, name))
            if len(col) != 3 or any(not 0 <= c <= 255 for c in col):
                raise ValueError(f"{name}={col} is not an RGB triple")
            # Plain int tuples whatever came in (lists, numpy): hashable and JSON-safe.
            object.__setattr__(self, name, col)

    @property
    def palette(self) -> tuple[RGB, RGB, RGB]:
        """(background, primary, secondary)."""
        return self.background, self.primary, self.secondary

    @classmethod
    def sample(cls, rng: np.random.Generator, family: str | None = None, primary_hue: float | None = None,
               spec: WorldSpec = WORLD_SPEC) -> "Style":
        """A random instance over the full ranges; ``primary_hue`` pins the primary's hue."""
        drawn = FAMILIES[rng.integers(len(FAMILIES))]  # always drawn: stable stream
        fam = family if family is not None else drawn
        angle, offset = rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0)
        background, primary, secondary = sample_palette(rng, primary_hue, spec)
        return cls(fam, _r4(angle) % 360.0, _r4(offset), background, primary, secondary)


def _name(x, attr: str) -> str:
    return x if isinstance(x, str) else getattr(x, attr)


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def caption(subject: Subject | str, style: Style | str, *, content_token: str = "",
            style_token: str = "") -> str:
    """``"A {class} in {family} style"``; optional identifier tokens go before the names
    (``"A sks star in zwx bands style"``), as in DreamBooth / UnZipLoRA prompts."""
    cls_words = _join(content_token, _name(subject, "cls"))
    fam_words = _join(style_token, _name(style, "family"))
    return f"A {cls_words} in {fam_words} style"


def content_caption(subject: Subject | str, *, content_token: str = "") -> str:
    """``"A {class}"`` (optionally ``"A {token} {class}"``)."""
    return f"A {_join(content_token, _name(subject, 'cls'))}"


def style_caption(style: Style | str, *, style_token: str = "") -> str:
    """``"in {family} style"`` (optionally ``"in {token} {family} style"``)."""
    return f"in {_join(style_token, _name(style, 'family'))} style"


def caption_words(text: str) -> list[str]:
    """Lower-cased words of a caption, for checking them against WORLD_WORDS."""
    return text.lower().split()
