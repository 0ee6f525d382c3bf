"""Benchmarks that print tables and write JSON (ratios against a baseline in the same run)."""

from __future__ import annotations

import json
from pathlib import Path

from ..runfolder import write_text_atomic


def write_report(json_path: str | Path | None, report: dict, table: str | None = None) -> None:
    """The report as JSON at `json_path`, written atomically, and, given a table, the same table
    as Markdown beside it (FILE.md)."""
    if not json_path:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=2))
    if table is not None:
        write_text_atomic(path.with_suffix(".md"), table + "\n")
