"""The pretraining / held-out split of the toy world, written down in code.

Two things are held out from pretraining:

* **Combinations.** ``HELDOUT_COMBOS`` are 16 of the 64 (class, family) pairs: two
  "diagonals" of the class x family grid, so every class and every family occurs
  in both the seen and the held-out set (the base model knows each factor, just
  not these pairings). ``SEEN_COMBOS`` are the other 48 (75 %).
* **Instances.** Held-out subjects and styles come from regions that the
  pretraining sampler never draws (both are fields of the ``WorldSpec``):

  - subjects: instance parameter ``a`` inside ``spec.subject_a_band`` (an interior
    band, so held-out subjects interpolate between seen ones rather than extrapolate);
  - styles: a primary colour whose hue lies inside ``spec.primary_hue_band`` (a
    cyan-to-blue range of primaries no pretraining style uses; backgrounds and
    secondaries may take any hue).

  Pretraining draws with every one of these outside its band, so the two sets are
  disjoint by construction (see ``is_seen_subject`` / ``is_seen_style`` versus
  ``is_heldout_subject`` / ``is_heldout_style``).

Everything here is deterministic: held-out instances are pure functions of their
index and the spec, and the pretraining sampler only consumes the generator it is given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
from PIL import Image

from .render import render
from .spec import WORLD_SPEC, Band, WorldSpec
from .world import CLASSES, FAMILIES, Style, Subject, caption, hue_of

HELDOUT_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, FAMILIES[(i + k) % len(FAMILIES)]) for k in (0, 3) for i, c in enumerate(CLASSES)
)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, f) for c in CLASSES for f in FAMILIES if (c, f) not in HELDOUT_COMBOS
)


def _inside(x: float, band: Band) -> bool:
    return band[0] <= x < band[1]


def is_seen_subject(s: Subject, spec: WorldSpec = WORLD_SPEC) -> bool:
    """True if the pretraining sampler may produce this subject's parameters."""
    return not _inside(s.a, spec.subject_a_band)


def is_heldout_subject(s: Subject, spec: WorldSpec = WORLD_SPEC) -> bool:
    return _inside(s.a, spec.subject_a_band)


def is_seen_style(t: Style, spec: WorldSpec = WORLD_SPEC) -> bool:
    """True if the pretraining sampler may produce this style's palette."""
    return not _inside(hue_of(t.primary), spec.primary_hue_band)


def is_heldout_style(t: Style, spec: WorldSpec = WORLD_SPEC) -> bool:
    return _inside(hue_of(t.primary), spec.primary_hue_band)


class PretrainSample(NamedTuple):
    """One pretraining example: render with ``render(subject, style, size, seed)``."""

    subject: Subject
    style: Style
    seed: int

    @property
    def caption(self) -> str:
        return caption(self.subject, self.style)

    def image(self, size: int = 64, spec: WorldSpec = WORLD_SPEC) -> Image.Image:
        return render(self.subject, self.style, size, self.seed, spec=spec)


def pretraining_sample(rng: np.random.Generator, spec: WorldSpec = WORLD_SPEC) -> PretrainSample:
    """A random seen combo with seen-region instances and a render seed."""
    cls, fam = SEEN_COMBOS[rng.integers(len(SEEN_COMBOS))]
    # Rejection keeps world.py ignorant of the split; acceptance is ~80 % / ~83 %.
    while not is_seen_subject(subject := Subject.sample(rng, cls=cls, spec=spec), spec):
        pass
    while not is_seen_style(style := Style.sample(rng, family=fam, spec=spec), spec):
        pass
    return PretrainSample(subject, style, int(rng.integers(2**31 - 1)))


def _in_band(rng: np.random.Generator, band: Band, spec: WorldSpec) -> float:
    lo, hi = band
    pad = spec.heldout_margin * (hi - lo)
    return round(float(rng.uniform(lo + pad, hi - pad)), 4)


def heldout_subject(index: int, cls: str, spec: WorldSpec = WORLD_SPEC) -> Subject:
    """The ``index``-th held-out subject of class ``cls`` (pure function of its inputs)."""
    rng = np.random.default_rng([spec.heldout_seed, 1, CLASSES.index(cls), index])
    return replace(Subject.sample(rng, cls=cls, spec=spec), a=_in_band(rng, spec.subject_a_band, spec))


def heldout_style(index: int, family: str, spec: WorldSpec = WORLD_SPEC) -> Style:
    """The ``index``-th held-out style of ``family`` (pure function of its inputs)."""
    rng = np.random.default_rng([spec.heldout_seed, 2, FAMILIES.index(family), index])
    return Style.sample(rng, family=family, primary_hue=_in_band(rng, spec.primary_hue_band, spec), spec=spec)


def heldout_subjects(n: int, spec: WorldSpec = WORLD_SPEC) -> list[Subject]:
    """``n`` held-out subjects, cycling through the classes (instance ``i // 8``)."""
    return [heldout_subject(i // len(CLASSES), CLASSES[i % len(CLASSES)], spec) for i in range(n)]


def heldout_styles(n: int, spec: WorldSpec = WORLD_SPEC) -> list[Style]:
    """``n`` held-out styles, cycling through the families (instance ``i // 8``)."""
    return [heldout_style(i // len(FAMILIES), FAMILIES[i % len(FAMILIES)], spec) for i in range(n)]


def heldout_images(n: int, size: int = 64, spec: WorldSpec = WORLD_SPEC) -> list[tuple[Subject, Style, Image.Image]]:
    """``n`` (subject, style, image) triples for decomposition benchmarks.

    Triple ``i`` uses held-out combo ``HELDOUT_COMBOS[i % 16]`` with held-out
    instances ``i // 16`` of that class and family, rendered with seed
    ``spec.heldout_seed + i``; so every prefix covers the combos as evenly as possible.
    """
    out = []
    for i in range(n):
        cls, fam = HELDOUT_COMBOS[i % len(HELDOUT_COMBOS)]
        k = i // len(HELDOUT_COMBOS)
        subject, style = heldout_subject(k, cls, spec), heldout_style(k, fam, spec)
        out.append((subject, style, render(subject, style, size, seed=spec.heldout_seed + i, spec=spec)))
    return out
