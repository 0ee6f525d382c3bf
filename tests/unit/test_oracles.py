"""The content / style oracles, validated on held-out instances at 64 px.

Each oracle must (i) separate same from different (ROC AUC >= 0.95, with
same-class / same-family instances among the negatives) while the other factor
varies, (ii) ignore the other factor (AUC <= 0.6 when only it differs), and
(iii) classify clean renders >= 90 % right. The palette estimate must recover a
render's colours and tell palettes apart whatever the subject.
"""

from dataclasses import replace

import numpy as np
import pytest

from unziplora.toyworld import (
    CLASSES,
    FAMILIES,
    Palette,
    classify_content,
    classify_style,
    content_embedding,
    content_similarity,
    foreground_mask,
    heldout_styles,
    heldout_subjects,
    palette_distance,
    palette_of,
    render,
    render_array,
    style_embedding,
    style_similarity,
)
from unziplora.toyworld.validation import classifier_accuracy, leak, roc_auc, separation

N = 32  # held-out subjects / styles: 4 instances per class / family
REPEATS = 3  # renders per instance, each with another partner factor and seed


@pytest.fixture(scope="module")
def heldout():
    return heldout_subjects(N), heldout_styles(N)


def test_roc_auc_helper():
    assert roc_auc([2, 3], [0, 1]) == 1.0
    assert roc_auc([0], [1]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5


def test_content_separates_subjects_across_styles(heldout):
    subjects, styles = heldout
    embs = [[content_embedding(render(s, styles[(5 * i + 11 * r) % N], 64, seed=100 * i + r))
             for r in range(REPEATS)] for i, s in enumerate(subjects)]
    auc, hard = separation(subjects, embs, lambda a, b: a.cls == b.cls, content_similarity)
    assert auc >= 0.95, auc
    assert hard >= 0.9, hard  # same class, different instance: the hard negatives


def test_style_separates_styles_across_subjects(heldout):
    subjects, styles = heldout
    embs = [[style_embedding(render(subjects[(3 * j + 7 * r) % N], t, 64, seed=100 * j + r + 7))
             for r in range(REPEATS)] for j, t in enumerate(styles)]
    auc, hard = separation(styles, embs, lambda a, b: a.family == b.family, style_similarity)
    assert auc >= 0.95, auc
    assert hard >= 0.9, hard  # same family, different instance


def test_content_ignores_style(heldout):
    subjects, styles = heldout
    rng = np.random.default_rng(1)

    def triple(k):  # one subject: (style A, style A, style B), all at different poses
        s = subjects[k % N]
        a, b = rng.choice(N, 2, replace=False)
        return [render(s, styles[j], 64, seed=int(rng.integers(1 << 30))) for j in (a, a, b)]

    auc = leak(2 * N, triple, content_embedding, content_similarity)
    assert 0.4 <= auc <= 0.6, auc


def test_style_ignores_content(heldout):
    subjects, styles = heldout
    rng = np.random.default_rng(2)

    def triple(k):  # one style: (subject A, subject A, subject B), different poses/phases
        t = styles[k % N]
        a, b = rng.choice(N, 2, replace=False)
        return [render(subjects[j], t, 64, seed=int(rng.integers(1 << 30))) for j in (a, a, b)]

    auc = leak(4 * N, triple, style_embedding, style_similarity)
    assert 0.4 <= auc <= 0.6, auc


def test_classifiers_on_clean_heldout_renders(heldout):
    class_acc, family_acc = classifier_accuracy(*heldout)
    assert class_acc >= 0.9, class_acc
    assert family_acc >= 0.9, family_acc


def test_scores_are_bounded_symmetric_and_accept_arrays_of_any_size(heldout):
    subjects, styles = heldout
    s, t = subjects[0], styles[9]
    img = render(s, t, 64, seed=4)
    big = render_array(s, t, 128, seed=4)  # same pose at another resolution
    other = render(subjects[3], styles[2], 64, seed=5)
    assert content_similarity(img, img) == pytest.approx(1.0)
    assert style_similarity(img, img) == pytest.approx(1.0)
    assert content_similarity(img, big) > 0.9 and style_similarity(img, big) > 0.5
    for f in (content_similarity, style_similarity):
        v = f(img, other)
        assert 0.0 <= v <= 1.0 and v == pytest.approx(f(other, img))
    assert classify_content(big) in CLASSES and classify_style(big) in FAMILIES


def test_blank_image_has_no_subject():
    blank = np.full((64, 64, 3), 200, dtype=np.uint8)
    assert foreground_mask(blank).max() == 0.0
    assert classify_style(blank) == "solid"
    assert 0.0 <= content_similarity(blank, blank) <= 1.0


def _shade(img, amplitude: float, seed: int) -> np.ndarray:
    """A generator's imperfection: a smooth colour ramp across the image plus pixel noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1.0, 1.0, 64)[None, :, None] * rng.uniform(-1, 1, 3) * amplitude
    noisy = np.asarray(img, float) + ramp + rng.normal(0, 3, (64, 64, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_a_shaded_flat_fill_is_still_solid_but_a_shaded_pattern_is_not(heldout):
    subjects, styles = heldout
    solids = [t for t in styles if t.family == "solid"]
    patterned = [t for t in styles if t.family in ("split", "bands", "quadrants")]
    for k, s in enumerate(subjects[:8]):
        # Up to +-20 colour units of shading: more than FLAT_CONTRAST, far less than primary-to-secondary.
        shaded = _shade(render(s, solids[k % len(solids)], 64, seed=k), 20.0, k)
        assert classify_style(shaded) == "solid"
        shaded = _shade(render(s, patterned[k % len(patterned)], 64, seed=k), 20.0, k)
        assert classify_style(shaded) != "solid"


def _true_palette(t) -> Palette:
    return Palette(t.background, (t.primary,) if t.family == "solid" else (t.primary, t.secondary))


def test_palette_of_recovers_a_renders_colours(heldout):
    subjects, styles = heldout
    errors = {f: [] for f in FAMILIES}
    for k in range(64):
        s, t = subjects[(5 * k) % N], styles[k % N]
        errors[t.family].append(palette_distance(render(s, t, 64, seed=k), _true_palette(t)))
    for family, e in errors.items():
        # Hard-edged fills give their exact colours; a ramp's ends are averaged over a few pixels.
        assert max(e) <= (20.0 if family in ("gradient", "radial") else 2.0), (family, e)
    p = palette_of(render(subjects[0], styles[3], 64, seed=1))
    assert p.background == tuple(float(c) for c in styles[3].background) and len(p.fill) == 2


def test_palette_distance_is_small_for_one_palette_and_large_for_another(heldout):
    subjects, styles = heldout
    rng = np.random.default_rng(5)
    same, other = [], []
    for k in range(96):
        t, s, s2 = styles[k % N], subjects[rng.integers(N)], subjects[rng.integers(N)]
        img = render(s, t, 64, seed=k)
        same.append(palette_distance(img, render(s2, t, 64, seed=k + 1000)))  # other subject and pose
        t2 = styles[(k + 1 + rng.integers(N - 1)) % N]
        other.append(palette_distance(img, render(s2, t2, 64, seed=k + 1000)))
    assert np.percentile(same, 90) <= 5.0 and max(same) <= 25.0, sorted(same)[-5:]
    assert np.percentile(other, 5) >= 40.0 and min(other) >= 25.0, sorted(other)[:5]
    assert palette_distance(Palette((0, 0, 0), ((100, 0, 0), (0, 100, 0))),
                            Palette((0, 0, 30), ((0, 100, 0), (100, 0, 0)))) == pytest.approx(30.0)


def test_style_similarity_sees_each_colour_and_the_family(heldout):
    subjects, styles = heldout
    for k, t in enumerate(t for t in styles[:16] if t.family != "solid"):
        ref = render(subjects[k], t, 64, seed=k)
        same = style_similarity(ref, render(subjects[k + 3], t, 64, seed=k + 1))
        assert same >= 0.8, t
        for name in ("background", "primary", "secondary"):
            moved = tuple(int(c) for c in np.clip(np.array(getattr(t, name)) + (90, -90, 60), 0, 255))
            changed = style_similarity(ref, render(subjects[k + 3], replace(t, **{name: moved}), 64, seed=k + 1))
            assert changed <= 0.5 * same, (t, name)
        other = next(f for f in FAMILIES[1:] if f != t.family)
        assert style_similarity(ref, render(subjects[k + 3], replace(t, family=other), 64, seed=k + 1)) <= 0.3
