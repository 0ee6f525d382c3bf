"""runs/index.html: one static page (no server, no script) to look through a batch.

Per row: its id, status and time, the input image, the run's preview grid (input | content alone
| style alone | together) and its scores; at the top the batch's totals. Images are linked by
relative paths, so the folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from ...run.folder import write_text_atomic
from .state import Layout, RowStatus
from .summary import format_seconds, metric_names, totals_lines

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; vertical-align: top; }
img.input { width: 128px; image-rendering: pixelated; }
img.grid { height: 160px; image-rendering: pixelated; }
.done { color: #1a7f37; } .failed { color: #cf222e; } .running { color: #9a6700; } .pending { color: #57606a; }
.note { max-width: 32em; font-size: 0.9em; }
"""


def _link(target: Path, page_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _image(target: Path | None, page_dir: Path, css: str, alt: str) -> str:
    if target is None or not target.is_file():
        return ""
    href = _link(target, page_dir)
    return f'<a href="{href}"><img class="{css}" src="{href}" alt="{html.escape(alt)}" loading="lazy"></a>'


def render_index(layout: Layout, statuses: list[RowStatus], title: str = "unziplora batch") -> str:
    page_dir = layout.out
    names = metric_names(statuses)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["id", "status", "time", "input", "preview", *names, "note"])
    rows = []
    for row in statuses:
        run = layout.run_dir(row.job)
        source = run / "input.png" if (run / "input.png").is_file() else row.job.image  # as read, once it ran
        name = html.escape(row.job.id)
        cells = [
            f'<a href="{_link(run, page_dir)}/">{name}</a>' if run.is_dir() else name,
            f'<span class="{row.status.value}">{row.status.value}</span>',
            html.escape(format_seconds(row.seconds)),
            _image(source, page_dir, "input", f"input of {row.job.id}"),
            _image(run / "preview.png", page_dir, "grid", f"preview of {row.job.id}"),
            *[f"{row.scores[n]:.3f}" if row.scores and n in row.scores else "-" for n in names],
            f'<span class="note">{html.escape(row.error or row.detail)}</span>',
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    totals = "<br>".join(html.escape(line) for line in totals_lines(statuses))
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p>{totals}</p>\n"
            f"<p>preview: input | content alone | style alone | together</p>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n</body></html>\n")


def write_index(layout: Layout, statuses: list[RowStatus], title: str = "unziplora batch") -> Path:
    """Write runs/index.html atomically (several processes may write it; the last one wins)."""
    layout.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(layout.index_html, render_index(layout, statuses, title))
    return layout.index_html
