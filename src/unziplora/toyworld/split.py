"""The pretraining / held-out split of the toy world, written down in code.

Two things are held out from pretraining:

* **Combinations.** ``HELDOUT_COMBOS`` are 16 of the 64 (class, family) pairs: two
  "diagonals" of the class x family grid, so every class and every family occurs
  in both the seen and the held-out set (the base model knows each factor, just
  not these pairings). ``SEEN_COMBOS`` are the other 48 (75 %).
* **Instances.** Held-out subjects and styles use parameter values that the
  pretraining sampler never produces:

  - subjects: instance parameter ``a`` inside ``SUBJECT_A_BAND`` (an interior band,
    so held-out subjects interpolate between seen ones rather than extrapolate);
  - styles: ``spacing`` inside ``STYLE_SPACING_BAND`` *and* foreground hue inside
    ``STYLE_FG_HUE_BAND`` (a teal-ish range of foreground colours no pretraining
    style uses).

  Pretraining draws with every one of these parameters *outside* its band, so the
  two sets are disjoint by construction (see ``is_seen_subject`` / ``is_seen_style``
  versus ``is_heldout_subject`` / ``is_heldout_style``).

Everything here is deterministic: held-out instances are pure functions of their
index, and the pretraining sampler only consumes the generator it is given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
from PIL import Image

from .render import render
from .world import CLASSES, FAMILIES, Style, Subject, caption, hue_of

HELDOUT_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, FAMILIES[(i + k) % len(FAMILIES)]) for k in (0, 3) for i, c in enumerate(CLASSES)
)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, f) for c in CLASSES for f in FAMILIES if (c, f) not in HELDOUT_COMBOS
)

SUBJECT_A_BAND = (0.40, 0.60)
STYLE_SPACING_BAND = (0.15, 0.17)
STYLE_FG_HUE_BAND = (165.0, 225.0)
HELDOUT_SEED = 20241205  # fixed: held-out instances must never change between runs
_MARGIN = 0.05  # held-out values keep this fraction of the band away from its edges


def _inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x < band[1]


def is_seen_subject(s: Subject) -> bool:
    """True if the pretraining sampler may produce this subject's parameters."""
    return not _inside(s.a, SUBJECT_A_BAND)


def is_heldout_subject(s: Subject) -> bool:
    return _inside(s.a, SUBJECT_A_BAND)


def is_seen_style(t: Style) -> bool:
    """True if the pretraining sampler may produce this style's parameters."""
    hue = hue_of(t.fg)
    return not _inside(t.spacing, STYLE_SPACING_BAND) and not _inside(hue, STYLE_FG_HUE_BAND)


def is_heldout_style(t: Style) -> bool:
    return _inside(t.spacing, STYLE_SPACING_BAND) and _inside(hue_of(t.fg), STYLE_FG_HUE_BAND)


class PretrainSample(NamedTuple):
    """One pretraining example: render with ``render(subject, style, size, seed)``."""

    subject: Subject
    style: Style
    seed: int

    @property
    def caption(self) -> str:
        return caption(self.subject, self.style)

    def image(self, size: int = 64) -> Image.Image:
        return render(self.subject, self.style, size, self.seed)


def pretraining_sample(rng: np.random.Generator) -> PretrainSample:
    """A random seen combo with seen-range instance parameters and a render seed."""
    cls, fam = SEEN_COMBOS[rng.integers(len(SEEN_COMBOS))]
    # Rejection keeps world.py ignorant of the split; acceptance is ~80 % / ~70 %.
    while not is_seen_subject(subject := Subject.sample(rng, cls=cls)):
        pass
    while not is_seen_style(style := Style.sample(rng, family=fam)):
        pass
    return PretrainSample(subject, style, int(rng.integers(2**31 - 1)))


def _in_band(rng: np.random.Generator, band: tuple[float, float]) -> float:
    lo, hi = band
    pad = _MARGIN * (hi - lo)
    return round(float(rng.uniform(lo + pad, hi - pad)), 4)


def heldout_subject(index: int, cls: str) -> Subject:
    """The ``index``-th held-out subject of class ``cls`` (pure function of its inputs)."""
    rng = np.random.default_rng([HELDOUT_SEED, 1, CLASSES.index(cls), index])
    return replace(Subject.sample(rng, cls=cls), a=_in_band(rng, SUBJECT_A_BAND))


def heldout_style(index: int, family: str) -> Style:
    """The ``index``-th held-out style of ``family`` (pure function of its inputs)."""
    rng = np.random.default_rng([HELDOUT_SEED, 2, FAMILIES.index(family), index])
    style = Style.sample(rng, family=family, fg_hue=_in_band(rng, STYLE_FG_HUE_BAND))
    return replace(style, spacing=_in_band(rng, STYLE_SPACING_BAND))


def heldout_subjects(n: int) -> list[Subject]:
    """``n`` held-out subjects, cycling through the classes (instance ``i // 8``)."""
    return [heldout_subject(i // len(CLASSES), CLASSES[i % len(CLASSES)]) for i in range(n)]


def heldout_styles(n: int) -> list[Style]:
    """``n`` held-out styles, cycling through the families (instance ``i // 8``)."""
    return [heldout_style(i // len(FAMILIES), FAMILIES[i % len(FAMILIES)]) for i in range(n)]


def heldout_images(n: int, size: int = 64) -> list[tuple[Subject, Style, Image.Image]]:
    """``n`` (subject, style, image) triples for decomposition benchmarks.

    Triple ``i`` uses held-out combo ``HELDOUT_COMBOS[i % 16]`` with held-out
    instances ``i // 16`` of that class and family, rendered with seed
    ``HELDOUT_SEED + i``; so every prefix covers the combos as evenly as possible.
    """
    out = []
    for i in range(n):
        cls, fam = HELDOUT_COMBOS[i % len(HELDOUT_COMBOS)]
        k = i // len(HELDOUT_COMBOS)
        subject, style = heldout_subject(k, cls), heldout_style(k, fam)
        out.append((subject, style, render(subject, style, size, seed=HELDOUT_SEED + i)))
    return out
