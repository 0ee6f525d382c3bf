"""The toy world's factors: subjects (content) and styles, plus its caption vocabulary.

A *subject* is a shape class plus instance parameters that make one subject distinct
inside its class (the toy analogue of "this particular dog"). A *style* is a pattern
family plus instance parameters and a palette (the analogue of "this particular
watercolour"). Both are frozen, hashable, JSON-serialisable dataclasses with a
stable short ``id``; everything random is drawn from a caller-supplied
``numpy.random.Generator`` so the world is deterministic by seed.

Pose (position, scale, rotation) is deliberately *not* part of a subject: it is
nuisance variation drawn at render time from the render seed (see ``render.py``).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "crescent", "arrow",
)
FAMILIES: tuple[str, ...] = (
    "solid", "stripes", "dots", "checker", "gradient", "outline", "zigzag", "noise",
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
ASPECT_RANGE = (0.6, 1.0)  # y-squash of the subject in its own frame
ANGLE_RANGE = (0.0, 180.0)  # pattern orientation in degrees (image frame)
SPACING_RANGE = (0.10, 0.22)  # pattern period as a fraction of the canvas side
WIDTH_RANGE = (0.30, 0.70)  # duty cycle / dot size / band thickness

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
        _check_unit("aspect", self.aspect, *ASPECT_RANGE)

    @classmethod
    def sample(klass, rng: np.random.Generator, cls: str | None = None) -> "Subject":
        """A random instance over the *full* parameter ranges (split.py restricts them)."""
        # The class is always drawn (even when given) so that fixing ``cls`` does not
        # shift the random stream of the remaining parameters.
        drawn = CLASSES[rng.integers(len(CLASSES))]
        a, b = rng.uniform(0.0, 1.0, size=2)
        aspect = rng.uniform(*ASPECT_RANGE)
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


def sample_palette(rng: np.random.Generator, fg_hue: float | None = None) -> tuple[RGB, RGB, RGB]:
    """(foreground, pattern, background) colours with guaranteed contrasts.

    The background must stand apart from both fill colours *and* from their mix
    (gradients, antialiased pattern edges), because the oracles segment the subject
    by distance from the border colour; fg and pattern must differ so the pattern
    is visible. Rejection sampling keeps it simple and still deterministic.
    """
    for _ in range(1000):
        h = rng.uniform(0.0, 360.0) if fg_hue is None else fg_hue
        fg = _hsv(h, rng.uniform(0.55, 1.0), rng.uniform(0.5, 0.9))
        pat = _hsv(h + rng.uniform(60.0, 300.0), rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.95))
        if rng.random() < 0.7:  # light paper-like background
            bg = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.88, 1.0))
        else:  # dark background
            bg = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.4), rng.uniform(0.05, 0.18))
        mid = tuple((x + y) / 2 for x, y in zip(fg, pat))
        if min(_dist(fg, bg), _dist(pat, bg), _dist(mid, bg)) >= 110 and _dist(fg, pat) >= 90:
            return fg, pat, bg
    raise RuntimeError("palette sampling failed; fg_hue may be unsatisfiable")


@dataclass(frozen=True)
class Style(_Serialisable):
    """One style: a pattern family, its instance parameters and a palette.

    ``angle`` (degrees, image frame), ``spacing`` (pattern period, fraction of the
    canvas) and ``width`` (duty cycle / dot size / band thickness) are interpreted
    per family in render.py; ``fg`` fills the silhouette, ``pattern`` draws the
    pattern on top of it, ``bg`` is the plain background.
    """

    family: str
    angle: float = 45.0
    spacing: float = 0.13  # defaults lie in the seen (pretraining) ranges
    width: float = 0.5
    fg: RGB = (200, 60, 60)
    pattern: RGB = (40, 40, 160)
    bg: RGB = (245, 245, 240)

    _ID_PREFIX = "s"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        self._plain_floats("angle", "spacing", "width")
        _check_unit("angle", self.angle, *ANGLE_RANGE)
        _check_unit("spacing", self.spacing, *SPACING_RANGE)
        _check_unit("width", self.width, *WIDTH_RANGE)
        for name in ("fg", "pattern", "bg"):
            col = tuple(int(c) for c in getattr(self, name))
            if len(col) != 3 or any(not 0 <= c <= 255 for c in col):
                raise ValueError(f"{name}={col} is not an RGB triple")
            # Plain int tuples whatever came in (lists, numpy): hashable and JSON-safe.
            object.__setattr__(self, name, col)

    @classmethod
    def sample(
        cls, rng: np.random.Generator, family: str | None = None, fg_hue: float | None = None
    ) -> "Style":
        """A random instance over the full ranges; ``fg_hue`` pins the foreground hue."""
        drawn = FAMILIES[rng.integers(len(FAMILIES))]  # always drawn: stable stream
        fam = family if family is not None else drawn
        angle = rng.uniform(*ANGLE_RANGE) % 180.0
        spacing = rng.uniform(*SPACING_RANGE)
        width = rng.uniform(*WIDTH_RANGE)
        fg, pat, bg = sample_palette(rng, fg_hue)
        return cls(fam, _r4(angle) % 180.0, _r4(spacing), _r4(width), fg, pat, bg)


def _name(x, attr: str) -> str:
    return x if isinstance(x, str) else getattr(x, attr)


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def caption(subject: Subject | str, style: Style | str, *, content_token: str = "",
            style_token: str = "") -> str:
    """``"A {class} in {family} style"``; optional identifier tokens go before the names
    (``"A sks star in zwx stripes style"``), as in DreamBooth / UnZipLoRA prompts."""
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
