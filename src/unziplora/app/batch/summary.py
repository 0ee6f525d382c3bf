"""The batch's summary: per row its status, time and scores; for the batch, counts and mean ± std."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .state import RowStatus, Status


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, as `bench quality` reports them."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Totals:
    rows: int
    counts: dict[str, int]
    seconds: tuple[float, float] | None  # mean, std of the done rows' time per image
    timed: int
    scores: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> mean, std, rows

    @property
    def failed(self) -> int:
        return self.counts[Status.FAILED.value]


def totals(statuses: list[RowStatus]) -> Totals:
    counts = {s.value: 0 for s in Status}
    for row in statuses:
        counts[row.status.value] += 1
    times = [r.seconds for r in statuses if r.status is Status.DONE and r.seconds is not None]
    metrics: dict[str, list[float]] = {}
    for row in statuses:
        for name, value in (row.scores or {}).items():
            metrics.setdefault(name, []).append(float(value))
    return Totals(len(statuses), counts, mean_std(times) if times else None, len(times),
                  {name: (*mean_std(v), len(v)) for name, v in metrics.items()})


def metric_names(statuses: list[RowStatus]) -> list[str]:
    names: list[str] = []
    for row in statuses:
        names += [n for n in (row.scores or {}) if n not in names]
    return names


def totals_lines(statuses: list[RowStatus], processes: int | None = None) -> list[str]:
    t = totals(statuses)
    lines = [f"{t.rows} rows: " + ", ".join(f"{n} {name}" for name, n in t.counts.items())]
    if t.seconds:
        mean, std = t.seconds
        lines.append(f"time per image: {format_seconds(mean)} ± {format_seconds(std)} ({t.timed} runs)")
        left = t.counts[Status.PENDING.value] + t.counts[Status.RUNNING.value]
        if left:
            per = f", {format_seconds(left * mean / processes)} with {processes} processes" if processes else ""
            lines.append(f"left: {left} rows, about {format_seconds(left * mean)} of one process{per}")
    for name, (mean, std, n) in t.scores.items():
        lines.append(f"{name}: {mean:.3f} ± {std:.3f} ({n} rows)")
    return lines


def summary_table(statuses: list[RowStatus], max_rows: int | None = None, processes: int | None = None) -> str:
    """A plain-text table of the rows, then the totals. With `max_rows`, a long batch shows its rows
    that are not done first (failures above all) and says how many it left out."""
    names = metric_names(statuses)
    shown = statuses
    if max_rows is not None and len(statuses) > max_rows:
        order = {Status.FAILED: 0, Status.RUNNING: 1, Status.PENDING: 2, Status.DONE: 3}
        shown = sorted(statuses, key=lambda r: order[r.status])[:max_rows]
    header = ["id", "status", "time", *names, "note"]
    rows = [[r.job.id, r.status.value, format_seconds(r.seconds),
             *[f"{r.scores[n]:.3f}" if r.scores and n in r.scores else "-" for n in names],
             r.error or r.detail] for r in shown]
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join([*(str(c).ljust(w) for c, w in zip(line[:-1], widths)), str(line[-1])]).rstrip()
             for line in [header, *rows]]
    if len(shown) < len(statuses):
        lines.append(f"... and {len(statuses) - len(shown)} more rows (every row: index.html, or --status)")
    return "\n".join([*lines, "", *totals_lines(statuses, processes)])
