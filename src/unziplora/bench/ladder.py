"""The ladder: what the toy world must show, rung by rung, each against ceiling and floor rows.

- R1 base model (`bench base-model`): right class and right fill >= 90 % on seen combos and
  >= 70 % on held-out ones.
- R2 reproduction: a one-image DreamBooth-LoRA generating with its training prompt reproduces its
  image: its `combined` score >= 0.8 of the ceiling's (fresh renders of the same subject and style).
- R3 separation (UnZipLoRA): subject alignment >= 0.8 of the ceiling, style alignment >= 0.6 of
  the ceiling; each leakage no higher than the floor's (the base model, no LoRA) plus 10 % of the
  gap between ceiling and floor of the same oracle's alignment (style leakage uses the style
  oracle, so style alignment's gap; subject leakage the content oracle, so subject alignment's).
- R4 versus the peers, same images, seeds and budget: UnZipLoRA's leakages below
  DreamBooth-LoRA's, and its subject and style alignment (the toy world's stand-ins for the
  paper's four columns: DINO and CSD-content, CLIP-I and CSD-style) above B-LoRA's.
Every comparison of two methods uses one rule (`paired`): the difference of their scores on the
same images and seeds, "ahead" only where its mean exceeds two standard errors of that paired
difference, "behind" where it is below minus two, else "not distinguishable". R4 passes a check
only where UnZipLoRA is ahead. The ablations M1 and M2 (the paper's ablation study) are compared
with the full method the same way (`ablation_rows`).
"""

from __future__ import annotations

import math
import statistics

BLORA_ROWS = ("b-lora", "b-lora-sdxl-blocks")
LOWER_IS_BETTER = ("style_leakage", "subject_leakage")
ABLATIONS = ("unziplora-m1", "unziplora-m2")


def paired(ours: list[float], theirs: list[float], higher_is_better: bool = True) -> dict:
    """Paired difference (ours - theirs, signed so that > 0 is better for ours) over the same images and
    seeds: its mean, standard error, and the verdict of the 2-standard-error rule."""
    if len(ours) != len(theirs) or len(ours) < 2:
        raise ValueError("a paired comparison needs two equally long lists of at least two scores")
    diffs = [(a - b) if higher_is_better else (b - a) for a, b in zip(ours, theirs)]
    mean, se = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    verdict = "ahead" if mean > 2 * se and mean > 0 else "behind" if mean < -2 * se and mean < 0 else "not distinguishable"
    return {"diff": mean, "se": se, "n": len(diffs), "verdict": verdict}


def _values(results: dict, row: str, metric: str) -> list[float] | None:
    return results.get(row, {}).get(metric, {}).get("values")


def compare(results: dict, ours: str, theirs: str, metric: str) -> dict | None:
    """`paired` on one metric of two rows (None when either row lacks it)."""
    a, b = _values(results, ours, metric), _values(results, theirs, metric)
    if not a or not b:
        return None
    return paired(a, b, metric not in LOWER_IS_BETTER)


def _mean(results: dict, row: str, metric: str) -> float | None:
    r = results.get(row, {})
    return r[metric]["mean"] if metric in r else None


def _rung(name: str, checks: list[tuple[str, float | None, str, float | None]]) -> dict:
    """checks: (what, value, op, bound); a missing value fails the rung with the reason."""
    rows, ok = [], True
    for what, value, op, bound in checks:
        passed = value is not None and bound is not None and (value >= bound if op == ">=" else value <= bound)
        ok = ok and passed
        rows.append({"check": what, "value": value, "op": op, "bound": bound, "passed": passed})
    return {"rung": name, "passed": ok, "checks": rows}


def quality_rungs(results: dict) -> list[dict]:
    """R2-R4 from the quality benchmark's rows (each metric's mean and its per-output values)."""
    ceiling = {m: _mean(results, "ceiling", m) for m in ("subject_alignment", "style_alignment", "combined")}
    floor = {m: _mean(results, "floor", m) for m in ("subject_alignment", "style_alignment", "style_leakage",
                                                    "subject_leakage")}

    def scaled(metric: str, fraction: float) -> float | None:
        return None if ceiling[metric] is None else fraction * ceiling[metric]

    def leak_bound(leak: str, align: str) -> float | None:
        if None in (floor[leak], ceiling[align], floor[align]):
            return None
        return floor[leak] + 0.1 * (ceiling[align] - floor[align])

    u, d = "unziplora", "dreambooth-lora"
    r2 = _rung("R2 reproduction", [("dreambooth-lora combined", _mean(results, d, "combined"), ">=",
                                    scaled("combined", 0.8))])
    r3 = _rung("R3 separation", [
        ("unziplora subject_alignment", _mean(results, u, "subject_alignment"), ">=", scaled("subject_alignment", 0.8)),
        ("unziplora style_alignment", _mean(results, u, "style_alignment"), ">=", scaled("style_alignment", 0.6)),
        ("unziplora style_leakage", _mean(results, u, "style_leakage"), "<=", leak_bound("style_leakage", "style_alignment")),
        ("unziplora subject_leakage", _mean(results, u, "subject_leakage"), "<=",
         leak_bound("subject_leakage", "subject_alignment")),
    ])
    checks = [_versus(results, u, d, leak) for leak in ("style_leakage", "subject_leakage")]
    blora = next((row for row in BLORA_ROWS if "subject_alignment" in results.get(row, {})), None)
    checks += [_versus(results, u, blora or "b-lora (not run)", metric)
               for metric in ("subject_alignment", "style_alignment")]
    return [r2, r3, {"rung": "R4 versus the peers", "passed": all(c["passed"] for c in checks), "checks": checks}]


def _versus(results: dict, ours: str, theirs: str, metric: str) -> dict:
    """One R4 check: passed only where `ours` is ahead of `theirs` by the paired 2-s.e. rule."""
    found = compare(results, ours, theirs, metric)
    return {"check": f"{ours} {metric} vs {theirs}", "value": found and found["diff"], "op": "> 2 s.e.",
            "bound": found and 2 * found["se"], "passed": bool(found) and found["verdict"] == "ahead",
            "verdict": found["verdict"] if found else "not run"}


def ablation_rows(results: dict, metrics) -> list[dict]:
    """The full method against each ablation, then each other method that ran, on every metric:
    paired verdicts (the README says where another is ahead)."""
    others = [*ABLATIONS, *(r for r in results if r not in ("unziplora", "ceiling", "floor", *ABLATIONS))]
    rows = []
    for other in others:
        for metric in metrics:
            found = compare(results, "unziplora", other, metric)
            if found:
                rows.append({"versus": other, "metric": metric, **found})
    return rows


def ablation_table(rows: list[dict]) -> str:
    lines = ["| UnZipLoRA vs | metric | difference (better > 0) | s.e. | verdict for UnZipLoRA |", "|---|---|---|---|---|"]
    lines += [f"| {r['versus']} | {r['metric']} | {r['diff']:+.3f} | {r['se']:.3f} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def ladder_table(rungs: list[dict]) -> str:
    lines = ["| rung | check | value | bound | passed |", "|---|---|---|---|---|"]
    for rung in rungs:
        for c in rung["checks"]:
            value = "-" if c["value"] is None else f"{c['value']:.3f}"
            bound = "-" if c["bound"] is None else f"{c['op']} {c['bound']:.3f}"
            passed = "yes" if c["passed"] else "no"
            if "verdict" in c:  # a paired comparison: its verdict, not only pass / fail
                value = "-" if c["value"] is None else f"{c['value']:+.3f} (paired difference)"
                bound = "-" if c["bound"] is None else f"2 s.e. = {c['bound']:.3f}"
                passed = f"{passed}: {c['verdict']}"
            lines.append(f"| {rung['rung']} | {c['check']} | {value} | {bound} | {passed} |")
    return "\n".join(lines)
