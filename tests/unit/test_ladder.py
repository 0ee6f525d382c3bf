"""The ladder's rungs (bench/ladder.py): each check against its bound; methods compared by the paired
two-standard-error rule."""

import pytest

from unziplora.bench.ladder import ablation_rows, ablation_table, ladder_table, paired, quality_rungs


def row(**values):
    """A row of per-output scores (4 images x seeds), with their mean as the table has it."""
    return {k: {"mean": sum(v) / len(v), "std": 0.1, "values": list(v)} for k, v in values.items()}


def test_paired_difference_verdicts():
    assert paired([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7])["verdict"] == "ahead"  # +0.1 on every pair
    assert paired([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7], higher_is_better=False)["verdict"] == "behind"
    noisy = paired([0.5, 0.9, 0.1, 0.6], [0.4, 0.2, 0.6, 0.5])  # mean +0.1, spread far larger
    assert noisy["verdict"] == "not distinguishable" and noisy["se"] > 0.05
    assert paired([0.3, 0.3], [0.3, 0.3])["verdict"] == "not distinguishable"
    # an unpaired mean gap of the same size is not enough: pairing is what the rule looks at
    assert paired([0.1, 0.9, 0.1, 0.9], [0.0, 0.8, 0.0, 0.8])["verdict"] == "ahead"
    with pytest.raises(ValueError):
        paired([0.1], [0.2])


def test_ladder_rungs_follow_their_bounds_and_the_paired_rule():
    results = {
        "ceiling": row(subject_alignment=[0.9] * 4, style_alignment=[0.9] * 4, combined=[0.9] * 4),
        "floor": row(subject_alignment=[0.3] * 4, style_alignment=[0.1] * 4, style_leakage=[0.05] * 4,
                     subject_leakage=[0.2] * 4),
        "dreambooth-lora": row(combined=[0.75] * 4, style_leakage=[0.5, 0.6, 0.4, 0.5],
                               subject_leakage=[0.4, 0.3, 0.5, 0.4]),
        "unziplora": row(subject_alignment=[0.75] * 4, style_alignment=[0.58, 0.6, 0.56, 0.58],
                         style_leakage=[0.12] * 4, subject_leakage=[0.3] * 4),
        "b-lora": row(subject_alignment=[0.7, 0.71, 0.69, 0.7], style_alignment=[0.6, 0.5, 0.7, 0.6]),
    }
    r2, r3, r4 = quality_rungs(results)
    assert r2["passed"]  # 0.75 >= 0.72
    assert [c["passed"] for c in r3["checks"]] == [True, True, True, False]  # 0.30 > 0.2 + 0.06
    assert r3["checks"][2]["bound"] == pytest.approx(0.05 + 0.1 * (0.9 - 0.1))
    assert [c["verdict"] for c in r4["checks"]] == ["ahead", "ahead", "ahead", "not distinguishable"]
    assert not r4["passed"]  # level is not ahead: the table says "not distinguishable"
    assert "no: not distinguishable" in ladder_table([r4])
    del results["b-lora"]
    assert quality_rungs(results)[2]["checks"][2]["verdict"] == "not run"


def test_ablations_are_compared_with_the_full_method_on_every_metric():
    results = {"unziplora": row(style_leakage=[0.1, 0.2, 0.1, 0.2], subject_alignment=[0.5] * 4),
               "unziplora-m1": row(style_leakage=[0.3, 0.4, 0.3, 0.4], subject_alignment=[0.6, 0.7, 0.6, 0.7]),
               "inspiration-tree": row(style_leakage=[0.1, 0.2, 0.1, 0.2], subject_alignment=[0.3, 0.35, 0.3, 0.35]),
               "ceiling": row(style_leakage=[0.0] * 4, subject_alignment=[1.0] * 4)}
    rows = ablation_rows(results, ("style_leakage", "subject_alignment"))
    assert [(r["versus"], r["metric"], r["verdict"]) for r in rows] == [  # ablations first, then the other methods
        ("unziplora-m1", "style_leakage", "ahead"), ("unziplora-m1", "subject_alignment", "behind"),
        ("inspiration-tree", "style_leakage", "not distinguishable"), ("inspiration-tree", "subject_alignment", "ahead")]
    assert "| unziplora-m1 | subject_alignment | -0.150 |" in ablation_table(rows)
