"""The toy world: determinism, rendering, captions, serialisation and the split."""

import json

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
    Pose,
    Style,
    Subject,
    caption,
    caption_words,
    content_caption,
    heldout_images,
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
    style_caption,
)
from unziplora.toyworld.split import STYLE_FG_HUE_BAND, STYLE_SPACING_BAND, SUBJECT_A_BAND


def _subjects(seed=0):
    rng = np.random.default_rng(seed)
    return [Subject.sample(rng, cls=c) for c in CLASSES]


def _styles(seed=0):
    rng = np.random.default_rng(seed)
    return [Style.sample(rng, family=f) for f in FAMILIES]


def _mask(arr: np.ndarray, bg) -> np.ndarray:
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
            m = _mask(arr, t.bg)
            # Visible, not filling the canvas, and never touching the border
            # (the oracles read the background colour off the border).
            assert 0.03 < m.mean() < 0.6, (s.cls, t.family, m.mean())
            assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_the_silhouette_does_not_depend_on_the_style():
    s = _subjects(2)[4]
    masks = [_mask(render_array(s, t, 64, seed=3), t.bg) for t in _styles(2)]
    for m in masks[1:]:
        assert (m != masks[0]).mean() < 0.01


def test_images_differ_across_classes_and_families():
    subjects, styles = _subjects(5), _styles(5)
    t = styles[1]
    masks = [_mask(render_array(s, t, 64, pose=Pose()), t.bg) for s in subjects]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.02, (CLASSES[i], CLASSES[j])
    # Same subject, pose and palette: only the pattern family changes.
    base = styles[0]
    restyled = [Style(f, fg=base.fg, pattern=base.pattern, bg=base.bg) for f in FAMILIES]
    arrays = [render_array(subjects[0], t, 64, seed=1) for t in restyled]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            diff = np.abs(arrays[i].astype(int) - arrays[j]).mean()
            assert diff > 1.0, (FAMILIES[i], FAMILIES[j])


def test_instance_parameters_change_the_shape():
    for cls in CLASSES:
        lo, hi = Subject(cls, 0.0, 0.0, 0.8), Subject(cls, 1.0, 1.0, 0.8)
        t = Style("solid")
        a, b = (_mask(render_array(s, t, 64, pose=Pose()), t.bg) for s in (lo, hi))
        assert (a != b).mean() > 0.01, cls


def test_captions_use_world_words_only():
    s, t = Subject("star"), Style("stripes")
    assert caption(s, t) == "A star in stripes style"
    assert content_caption(s) == "A star"
    assert style_caption(t) == "in stripes style"
    with_tokens = caption("star", "dots", content_token="sks", style_token="zwx")
    assert with_tokens == "A sks star in zwx dots style"
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
    style = Style("dots", 30.0, 0.12, 0.4, (10, 20, 30), (200, 100, 50), (250, 250, 250))
    assert style.id == "s2c79227636"


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        Subject("dragon")
    with pytest.raises(ValueError):
        Subject("star", a=1.5)
    with pytest.raises(ValueError):
        Style("plaid")
    with pytest.raises(ValueError):
        Style("dots", spacing=0.9)
    with pytest.raises(ValueError):
        Subject.from_dict({"cls": "star", "colour": 1})


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
        assert not SUBJECT_A_BAND[0] <= s.subject.a < SUBJECT_A_BAND[1]
        assert not STYLE_SPACING_BAND[0] <= s.style.spacing < STYLE_SPACING_BAND[1]
        assert not STYLE_FG_HUE_BAND[0] <= hue_of(s.style.fg) < STYLE_FG_HUE_BAND[1]
        assert not set(caption_words(s.caption)) & set(RARE_TOKENS)
    rng2 = np.random.default_rng(0)
    assert [pretraining_sample(rng2) for _ in range(600)] == samples


def test_held_out_instances_are_deterministic_and_outside_pretraining():
    subjects, styles = heldout_subjects(24), heldout_styles(24)
    assert subjects == heldout_subjects(24) and styles == heldout_styles(24)
    assert all(is_heldout_subject(s) and not is_seen_subject(s) for s in subjects)
    assert all(is_heldout_style(t) and not is_seen_style(t) for t in styles)
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
