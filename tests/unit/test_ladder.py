"""The ladder's rungs (bench/ladder.py): each check against its bound, peers within a standard error."""


def test_ladder_rungs_follow_their_bounds():
    from unziplora.bench.ladder import quality_rungs

    def row(**means):
        return {k: {"mean": v, "std": 0.1} for k, v in means.items()}

    results = {
        "ceiling": row(subject_alignment=0.9, style_alignment=0.9, combined=0.9),
        "floor": row(subject_alignment=0.3, style_alignment=0.1, style_leakage=0.05, subject_leakage=0.2),
        "dreambooth-lora": row(combined=0.75, style_leakage=0.5, subject_leakage=0.4),
        "unziplora": row(subject_alignment=0.75, style_alignment=0.58, style_leakage=0.12, subject_leakage=0.3),
        "b-lora": row(subject_alignment=0.7, style_alignment=0.6),
    }
    r2, r3, r4 = quality_rungs(results, 24)
    assert r2["passed"]  # 0.75 >= 0.72
    assert [c["passed"] for c in r3["checks"]] == [True, True, True, False]  # 0.30 > 0.2 + 0.06
    assert r3["checks"][2]["bound"] == 0.05 + 0.1 * (0.9 - 0.1)
    assert not r3["passed"]
    assert [c["passed"] for c in r4["checks"]] == [True, True, True, True]  # 0.58 vs 0.6 - 0.029: level
    results["unziplora"]["style_alignment"]["mean"] = 0.5
    assert not quality_rungs(results, 24)[2]["checks"][3]["passed"]
    del results["b-lora"]
    assert quality_rungs(results, 24)[2]["checks"][2]["bound"] is None  # no peer: the rung cannot pass
