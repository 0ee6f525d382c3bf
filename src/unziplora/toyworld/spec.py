"""The toy world's parameters in one frozen object: sampling ranges, palette contrasts, held-out regions.

Every function that draws, renders, splits or judges the world takes ``spec: WorldSpec = WORLD_SPEC``.
A variant of the world is ``dataclasses.replace(WORLD_SPEC, ...)`` passed in, never a patched module
global; the spec is hashable, so caches (the oracles' prototypes) key on it.

Colour distances are Euclidean in RGB 0-255 (0 to 441); hues are HSV degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

Band = tuple[float, float]


def _check_band(name: str, band: Band, lo: float, hi: float) -> None:
    if len(band) != 2 or not lo <= band[0] < band[1] <= hi:
        raise ValueError(f"{name}={band} must be an increasing pair inside [{lo}, {hi}]")


@dataclass(frozen=True)
class WorldSpec:
    """Ranges the world's samplers draw from and the regions its split holds out."""

    # Subjects: y-squash of the shape in its own frame.
    aspect_range: Band = (0.6, 1.0)
    # Pose (nuisance, drawn per render): shift in canvas fractions either way, scale, rotation in
    # degrees either way. These ranges keep every subject inside the canvas with >= 1 px at 64 px.
    shift: float = 0.07
    scale_range: Band = (0.85, 1.1)
    rotation: float = 30.0
    # Fills: the rim family's rim width as a fraction of the subject's RMS radius (~4.5 px at 64 px),
    # capped at 45 % of the subject's depth (fills.py) so that an interior always remains.
    rim_width: float = 0.3
    # Radial family: its centre moves up to this fraction of the subject's RMS radius.
    radial_offset: float = 0.6
    # Palettes. Background kinds (light, dark, coloured) and their probabilities.
    background_weights: tuple[float, float, float] = (0.35, 0.3, 0.35)
    # The background keeps this distance from every mix of primary and secondary (gradients and
    # antialiased edges are such mixes; the oracles segment by distance from the border colour) ...
    min_background_contrast: float = 100.0
    # ... and primary and secondary keep this distance from each other, so every family shows.
    min_fill_contrast: float = 100.0
    # Primary colours are saturated enough that their hue (the held-out band below) is well defined.
    primary_saturation: Band = (0.5, 1.0)
    primary_value: Band = (0.4, 0.95)
    # The split: held-out subjects have instance parameter ``a`` in this interior band (they
    # interpolate between seen subjects); held-out styles have a primary hue in this band.
    subject_a_band: Band = (0.40, 0.60)
    primary_hue_band: Band = (165.0, 225.0)
    heldout_seed: int = 20241205  # fixed: held-out instances must never change between runs
    heldout_margin: float = 0.05  # held-out values keep this fraction of a band away from its edges

    def __post_init__(self) -> None:
        _check_band("aspect_range", self.aspect_range, 0.05, 1.0)
        _check_band("scale_range", self.scale_range, 0.1, 2.0)
        _check_band("primary_saturation", self.primary_saturation, 0.0, 1.0)
        _check_band("primary_value", self.primary_value, 0.0, 1.0)
        _check_band("subject_a_band", self.subject_a_band, 0.0, 1.0)
        _check_band("primary_hue_band", self.primary_hue_band, 0.0, 360.0)
        if not 0.0 <= self.shift <= 0.2 or not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"shift={self.shift} must lie in [0, 0.2] and rotation={self.rotation} in [0, 180]")
        if not 0.0 < self.rim_width <= 1.0 or not 0.0 <= self.radial_offset <= 1.0:
            raise ValueError(f"rim_width={self.rim_width} must lie in (0, 1], radial_offset={self.radial_offset} in [0, 1]")
        if len(self.background_weights) != 3 or min(self.background_weights) < 0 or sum(self.background_weights) <= 0:
            raise ValueError(f"background_weights={self.background_weights} must be 3 non-negative weights")
        if not 0.0 <= self.heldout_margin < 0.5:
            raise ValueError(f"heldout_margin={self.heldout_margin} must lie in [0, 0.5)")


WORLD_SPEC = WorldSpec()
