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
  paper's four columns: DINO and CSD-content, CLIP-I and CSD-style) at least level with B-LoRA's,
  "level" meaning not lower by more than one standard error of the difference.
"""

from __future__ import annotations

import math

BLORA_ROWS = ("b-lora", "b-lora-sdxl-blocks")


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


def quality_rungs(results: dict, n: int) -> list[dict]:
    """R2-R4 from the quality benchmark's rows (`n` outputs per cell, for standard errors)."""
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
    checks = [(f"unziplora {leak} vs dreambooth-lora", _mean(results, u, leak), "<=", _mean(results, d, leak))
              for leak in ("style_leakage", "subject_leakage")]
    blora = next((row for row in BLORA_ROWS if "subject_alignment" in results.get(row, {})), None)
    for metric in ("subject_alignment", "style_alignment"):
        bound = None
        if blora is not None and metric in results.get(u, {}):
            a, b = results[u][metric], results[blora][metric]
            bound = b["mean"] - math.sqrt((a["std"] ** 2 + b["std"] ** 2) / max(n, 1))
        checks.append((f"unziplora {metric} vs {blora or 'b-lora (not run)'}", _mean(results, u, metric), ">=", bound))
    return [r2, r3, _rung("R4 versus the peers", checks)]


def ladder_table(rungs: list[dict]) -> str:
    lines = ["| rung | check | value | bound | passed |", "|---|---|---|---|---|"]
    for rung in rungs:
        for c in rung["checks"]:
            value = "-" if c["value"] is None else f"{c['value']:.3f}"
            bound = "-" if c["bound"] is None else f"{c['op']} {c['bound']:.3f}"
            lines.append(f"| {rung['rung']} | {c['check']} | {value} | {bound} | {'yes' if c['passed'] else 'no'} |")
    return "\n".join(lines)
