"""benchmarks/recipe_experiment.py's world overrides (--periods, --fixed-angle, --anchor-phase): the
narrower worlds the recipe arms train on, in one process only."""

import argparse
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unziplora.toyworld.render  # noqa: F401  (the module; the package exports a function of that name)
from unziplora.toyworld import world
from unziplora.toyworld.world import Style

recipe_experiment = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "recipe_experiment.py"))
render_module = sys.modules["unziplora.toyworld.render"]


@pytest.fixture
def restored_world(monkeypatch):
    """Whatever override_world changes is put back after the test."""
    for name in ("ANGLE_RANGE", "SPACING_RANGE"):
        monkeypatch.setattr(world, name, getattr(world, name))
    monkeypatch.setattr(render_module, "_pattern_field", render_module._pattern_field)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    recipe_experiment["add_world_arguments"](parser)
    return parser.parse_args(list(argv))


def stripes_fields(seeds=(1, 2)) -> list[np.ndarray]:
    style = Style("stripes", 30.0, 0.15, 0.5, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0))
    mask = Image.new("L", (64, 64), 255)
    return [render_module._pattern_field(style, 64, np.random.default_rng(s), mask) for s in seeds]


def test_no_option_overrides_nothing(restored_world):
    assert not recipe_experiment["override_world"](parse())
    a, b = stripes_fields()
    assert not np.array_equal(a, b)  # the world's random phase


def test_fixed_angle_and_periods_narrow_the_style_draws(restored_world):
    assert recipe_experiment["override_world"](parse("--fixed-angle", "45", "--periods", "0.2", "0.3"))
    styles = [Style.sample(np.random.default_rng(s)) for s in range(20)]
    assert {s.angle for s in styles} == {45.0}
    assert all(0.2 <= s.spacing <= 0.3 for s in styles)


def test_anchored_phase_draws_the_same_pattern_for_every_seed(restored_world):
    recipe_experiment["override_world"](parse("--anchor-phase"))
    a, b = stripes_fields()
    assert np.array_equal(a, b) and 0 < a.mean() < 1
