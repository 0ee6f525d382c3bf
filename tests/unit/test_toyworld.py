"""The toy world: determinism, rendering, fills, palettes, captions, serialisation, the spec and the split."""

import json
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
from PIL import Image

from unziplora.toyworld import (
    CLASSES,
    FAMILIES,
    HELDOUT_COMBOS,
    RARE_TOKENS,
    SEEN_COMBOS,
    WORLD_WORDS,
    WORLD_SPEC,
    Pose,
    Style,
    Subject,
    WorldSpec,
    caption,
    caption_words,
    content_caption,
    fill_field,
    heldout_images,
    heldout_style,
    heldout_styles,
    heldout_subjects,
    hue_of,
    is_heldout_style,
    is_heldout_subject,
    is_seen_style,
    is_seen_subject,
    pretraining_sample,
    render,
    render_array,
    sample_palette,
    style_caption,
)
from unziplora.toyworld.render import _silhouette
from unziplora.toyworld.world import mix_distance


def _subjects(seed=0):
    rng = np.random.default_rng(seed)
    return [Subject.sample(rng, cls=c) for c in CLASSES]


def _styles(seed=0):
    rng = np.random.default_rng(seed)
    return [Style.sample(rng, family=f) for f in FAMILIES]


def _mask(arr: np.ndarray, bg) -> np.ndarray:
    # 30 of the palette's >= 100 background contrast: the antialiased edge counts from ~30 % coverage.
    return np.abs(arr.astype(int) - np.array(bg)).sum(-1) > 30


# ---------------------------------------------------------------- world + render
def test_vocabulary_is_large_enough():
    assert len(CLASSES) >= 8 and len(FAMILIES) >= 8
    assert set(CLASSES) | set(FAMILIES) | set(RARE_TOKENS) <= set(WORLD_WORDS)
    assert {"monadikos", "sks", "zwx"} <= set(RARE_TOKENS)


def test_sampling_is_deterministic_by_seed():
    assert _subjects(3) == _subjects(3) and _styles(3) == _styles(3)
    assert _subjects(3) != _subjects(4) and _styles(3) != _styles(4)


def test_render_is_deterministic_and_seed_varies_pose():
    s, t = _subjects()[3], _styles()[1]
    a, b = render_array(s, t, 64, seed=5), render_array(s, t, 64, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_array(s, t, 64, seed=6))
    img = render(s, t, 64, seed=5)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(img), a)


@pytest.mark.parametrize("size", [32, 64])
def test_every_class_in_every_family_renders_inside_the_canvas(size):
    for s in _subjects(1):
        for t in _styles(1):
            arr = render_array(s, t, size, seed=7)
            assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
            m = _mask(arr, t.background)
            # Visible, not filling the canvas, and never touching the border
            # (the oracles read the background colour off the border).
            assert 0.03 < m.mean() < 0.6, (s.cls, t.family, m.mean())
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_the_silhouette_does_not_depend_on_the_style():
    s = _subjects(2)[4]
    masks = [_mask(render_array(s, t, 64, seed=3), t.background) for t in _styles(2)]
    for m in masks[1:]:
        assert (m != masks[0]).mean() < 0.01


def test_images_differ_across_classes_and_families():
    subjects, styles = _subjects(5), _styles(5)
    t = styles[1]
    masks = [_mask(render_array(s, t, 64, pose=Pose()), t.background) for s in subjects]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.02, (CLASSES[i], CLASSES[j])
    # Same subject, pose and palette: only the fill family changes.
    base = styles[0]
    restyled = [Style(f, angle=30.0, offset=0.5, background=base.background, primary=base.primary,
                      secondary=base.secondary) for f in FAMILIES]
    arrays = [render_array(subjects[0], t, 64, seed=1) for t in restyled]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            changed = (np.abs(arrays[i].astype(int) - arrays[j]).sum(-1) > 30).mean()
            assert changed > 0.03, (FAMILIES[i], FAMILIES[j])  # >= ~120 pixels of a ~800 px subject


def test_instance_parameters_change_the_shape():
    for cls in CLASSES:
        lo, hi = Subject(cls, 0.0, 0.0, 0.8), Subject(cls, 1.0, 1.0, 0.8)
        t = Style("solid")
        a, b = (_mask(render_array(s, t, 64, pose=Pose()), t.background) for s in (lo, hi))
        assert (a != b).mean() > 0.01, cls


def test_captions_use_world_words_only():
    s, t = Subject("star"), Style("bands")
    assert caption(s, t) == "A star in bands style"
    assert content_caption(s) == "A star"
    assert style_caption(t) == "in bands style"
    with_tokens = caption("star", "rim", content_token="sks", style_token="zwx")
    assert with_tokens == "A sks star in zwx rim style"
    # One alphabetic word per family: the tiny tokenizer gives each a single token.
    assert all(f.isalpha() and f.islower() for f in FAMILIES + CLASSES)
    for text in (caption(s, t), content_caption("heart", content_token="monadikos")):
        assert set(caption_words(text)) <= set(WORLD_WORDS)


def test_serialisation_round_trip_and_stable_ids():
    for obj in _subjects(9) + _styles(9):
        d = json.loads(json.dumps(obj.to_dict()))
        back = type(obj).from_dict(d)
        assert back == obj and hash(back) == hash(obj) and back.id == obj.id
    ids = {o.id for o in _subjects(9) + _styles(9)}
    assert len(ids) == len(CLASSES) + len(FAMILIES)
    # Pinned: ids name checkpoints and results, so they must never change.
    assert Subject("star", 0.25, 0.5, 0.75).id == "c495c121c4e"
    style = Style("bands", 30.0, 0.4, (250, 250, 250), (200, 100, 50), (10, 20, 30))
    assert style.id == "s33c63e7978"


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        Subject("dragon")
    with pytest.raises(ValueError):
        Subject("star", a=1.5)
    with pytest.raises(ValueError):
        Style("plaid")
    with pytest.raises(ValueError):
        Style("bands", angle=360.0)
    with pytest.raises(ValueError):
        Style("radial", offset=1.5)
    with pytest.raises(ValueError):
        Style("rim", primary=(0, 0, 256))
    with pytest.raises(ValueError):
        Subject.from_dict({"cls": "star", "colour": 1})


# ----------------------------------------------------------------- fills + palettes
def _canonical_cover(subject: Subject, size: int = 64) -> np.ndarray:
    return _silhouette(subject, Pose(), size)[0]


def _regions(family: str, cover: np.ndarray) -> list[np.ndarray]:
    t = fill_field(family, 30.0, 0.5, cover)
    inside = cover >= 0.5
    return [inside & (t < 0.5), inside & (t >= 0.5)]


CHUNKY = ("circle", "square", "heart")  # subjects wide enough to show a family's full structure


@pytest.mark.parametrize("family", ["split", "bands", "bullseye", "quadrants", "rim"])
def test_hard_fills_are_at_the_scale_of_the_subject(family):
    """Every colour part is wide (the 64 px subject is ~35-45 px across): 1-px steps from its
    middle to its edge >= 5 (a part >= ~10 px across) for halves, bands and quadrants, >= 4
    (~7 px) for the bullseye's rings, >= 2 (~4.5 px) for the rim."""
    from unziplora.toyworld.fills import depth

    for cls in CHUNKY:
        for region in _regions(family, _canonical_cover(Subject(cls, a=0.0, b=0.3))):
            assert region.sum() >= 80, (family, cls)
            assert depth(region).max() >= {"rim": 2, "bullseye": 4}.get(family, 5), (family, cls)


@pytest.mark.parametrize("family", ["gradient", "radial"])
def test_ramps_span_the_subject(family):
    for cls in CHUNKY:
        cover = _canonical_cover(Subject(cls, a=0.0, b=0.3))
        t = fill_field(family, 30.0, 0.5, cover)
        gy, gx = np.gradient(t)
        inner = cover >= 0.999
        assert np.hypot(gx, gy)[inner].max() <= 1 / 10, (family, cls)  # primary to secondary over >= 10 px
        assert t[inner].min() <= 0.05 and t[inner].max() >= 0.95, (family, cls)  # both colours show


def test_every_family_shows_both_colours_on_every_subject_even_thin_ones():
    for cls in CLASSES:
        for a, b in ((0.0, 0.0), (1.0, 1.0)):  # the extremes: a thin ring, a thin crescent, spiky stars
            cover = _canonical_cover(Subject(cls, a, b, 0.6))
            area = (cover >= 0.5).sum()
            for family in FAMILIES[1:]:
                for region in _regions(family, cover):
                    assert region.sum() >= 0.05 * area, (cls, a, family)


def test_the_fill_moves_with_the_subject_not_the_canvas():
    s, t = Subject("heart", 0.3, 0.5, 0.9), Style("quadrants", 20.0, 0.0, (250, 250, 250), (200, 40, 40), (30, 30, 150))
    for family in FAMILIES:
        t = replace(t, family=family)
        a = render_array(s, t, 64, pose=Pose()).astype(int)
        b = render_array(s, t, 64, pose=Pose(dx=4 / 64)).astype(int)  # exactly 4 px to the right
        assert np.abs(b[:, 4:] - a[:, :-4]).max() <= 2, family


def test_palettes_keep_their_contrasts_and_backgrounds_vary_widely():
    import colorsys

    rng = np.random.default_rng(0)
    palettes = [sample_palette(rng) for _ in range(400)]
    for background, primary, secondary in palettes:
        assert mix_distance(background, primary, secondary) >= WORLD_SPEC.min_background_contrast
        assert np.linalg.norm(np.subtract(primary, secondary)) >= WORLD_SPEC.min_fill_contrast
    hsv = np.array([colorsys.rgb_to_hsv(*(c / 255 for c in bg)) for bg, _, _ in palettes])
    light = (hsv[:, 2] >= 0.85) & (hsv[:, 1] <= 0.25)
    dark = hsv[:, 2] <= 0.22
    coloured = (hsv[:, 1] >= 0.4) & (hsv[:, 2] >= 0.35)
    for kind in (light, dark, coloured):
        assert kind.mean() >= 0.15
    hues = hsv[coloured, 0] * 360
    assert np.histogram(hues, bins=6, range=(0, 360))[0].min() >= 5  # coloured backgrounds of every hue


def test_mix_distance_is_the_distance_to_the_segment():
    assert mix_distance((0, 0, 0), (100, 0, 0), (0, 100, 0)) == pytest.approx(50 * np.sqrt(2))
    assert mix_distance((200, 0, 0), (100, 0, 0), (0, 100, 0)) == pytest.approx(100)


# --------------------------------------------------------------------------- spec
def test_the_spec_is_frozen_validated_and_passed_in():
    with pytest.raises(FrozenInstanceError):
        WORLD_SPEC.rim_width = 0.5
    with pytest.raises(ValueError, match="primary_hue_band"):
        WorldSpec(primary_hue_band=(200.0, 100.0))
    with pytest.raises(ValueError, match="rim_width"):
        WorldSpec(rim_width=0.0)
    reds = replace(WORLD_SPEC, primary_hue_band=(0.0, 40.0))
    held = [heldout_style(i, "split", reds) for i in range(6)]
    assert all(0.0 <= hue_of(t.primary) < 40.0 and is_heldout_style(t, reds) for t in held)
    assert not any(is_heldout_style(t) for t in held)  # the default world is untouched
    rng = np.random.default_rng(0)
    assert not any(0.0 <= hue_of(pretraining_sample(rng, reds).style.primary) < 40.0 for _ in range(200))
    wide = replace(WORLD_SPEC, rim_width=0.6)
    s, t = Subject("square", 0.2, 0.2), Style("rim")
    assert not np.array_equal(render_array(s, t, 64, 1, spec=wide), render_array(s, t, 64, 1))


# ------------------------------------------------------------------------- split
def test_combos_partition_the_grid_and_cover_every_factor_twice():
    seen, held = set(SEEN_COMBOS), set(HELDOUT_COMBOS)
    assert not seen & held
    assert seen | held == {(c, f) for c in CLASSES for f in FAMILIES}
    assert len(SEEN_COMBOS) == 48 and len(HELDOUT_COMBOS) == 16
    for combos in (seen, held):
        assert {c for c, _ in combos} == set(CLASSES)
        assert {f for _, f in combos} == set(FAMILIES)


def test_pretraining_sampler_never_yields_held_out_combos_or_parameters():
    rng = np.random.default_rng(0)
    samples = [pretraining_sample(rng) for _ in range(600)]
    combos = {(s.subject.cls, s.style.family) for s in samples}
    assert combos <= set(SEEN_COMBOS) and len(combos) == len(SEEN_COMBOS)
    for s in samples:
        assert is_seen_subject(s.subject) and not is_heldout_subject(s.subject)
        assert is_seen_style(s.style) and not is_heldout_style(s.style)
        lo, hi = WORLD_SPEC.subject_a_band
        assert not lo <= s.subject.a < hi
        lo, hi = WORLD_SPEC.primary_hue_band
        assert not lo <= hue_of(s.style.primary) < hi
        assert not set(caption_words(s.caption)) & set(RARE_TOKENS)
    rng2 = np.random.default_rng(0)
    assert [pretraining_sample(rng2) for _ in range(600)] == samples


def test_held_out_instances_are_deterministic_and_outside_pretraining():
    subjects, styles = heldout_subjects(24), heldout_styles(24)
    assert subjects == heldout_subjects(24) and styles == heldout_styles(24)
    assert all(is_heldout_subject(s) and not is_seen_subject(s) for s in subjects)
    assert all(is_heldout_style(t) and not is_seen_style(t) for t in styles)
    lo, hi = WORLD_SPEC.primary_hue_band
    assert all(lo <= hue_of(t.primary) < hi for t in styles)
    assert {s.cls for s in subjects} == set(CLASSES) and {t.family for t in styles} == set(FAMILIES)
    assert len(set(subjects)) == 24 and len(set(styles)) == 24


def test_heldout_images_are_deterministic_held_out_triples():
    a, b = heldout_images(20, size=32), heldout_images(20, size=32)
    assert len(a) == 20
    for (s, t, img), (s2, t2, img2) in zip(a, b):
        assert (s, t) == (s2, t2) and img.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(img), np.asarray(img2))
        assert (s.cls, t.family) in HELDOUT_COMBOS
        assert is_heldout_subject(s) and is_heldout_style(t)
    assert {(s.cls, t.family) for s, t, _ in a[:16]} == set(HELDOUT_COMBOS)
