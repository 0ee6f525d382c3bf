"""`unziplora batch`: decompose many images, each process one whole image at a time, resumable.

    unziplora batch jobs.csv --out runs/                                    # one process
    accelerate launch --num_processes 8 -m unziplora batch jobs.csv --out runs/   # 8 GPUs
    unziplora batch jobs.csv --out runs/ --shard 3/16                       # one task of an array job

One decomposition trains on a single image (batch size 1), so a batch runs rows side by side,
never one row across devices. Each process takes its share of the rows (shard.py), runs each
with `decompose.decompose` into runs/<id>/ (runner.py) and moves on; what is done, running,
failed or pending is read from runs/ itself (state.py), so killing any process and launching
the same command again finishes the batch, each run written once. At the end the main process
prints the summary (summary.py) and writes runs/index.html (html.py). docs/scale.md: one GPU
to many nodes, and what to expect.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from .evaluate import Evaluation
from .jobs import Job, read_jobs
from .runner import BatchOptions, row_config
from .shard import Shard, parse_shard
from .state import Layout, RowStatus, Status, read_statuses

__all__ = ["BatchOptions", "BatchResult", "Evaluation", "Job", "RowStatus", "Shard", "Status", "batch_status",
           "parse_shard", "read_jobs", "run_batch"]

# The end-of-batch table lists at most this many rows (the ones not done first); --status lists all.
TABLE_ROWS = 50


@dataclass(frozen=True)
class BatchResult:
    rows: list[RowStatus]  # the rows of this launch (its --shard, every process), as the main process saw them
    mine: list[RowStatus]  # the rows this process ran or skipped
    is_main: bool

    @property
    def failed(self) -> bool:
        """Whether a row failed: of the whole launch for its main process, of its own rows for the others."""
        return any(r.status is Status.FAILED for r in (self.rows if self.is_main else self.mine))


def _check_eval(jobs: list[Job], options: BatchOptions) -> None:
    if options.evaluation is None:
        return
    subjects = []
    for job in jobs:
        try:
            _, resolved = row_config(job, options)
        except Exception:  # noqa: BLE001: the row will fail with its own line when it runs
            continue
        subjects.append((job.id, resolved.config.prompts.subject, resolved.config.prompts.style))
    options.evaluation.check(subjects)


def run_batch(jobs: str | Path, out: str | Path, options: BatchOptions | None = None, shard: Shard | None = None,
              aliases: dict[str, str] | None = None) -> BatchResult:
    """Run this process's rows of the jobs file into `out`, skipping finished rows, resuming
    interrupted ones; every process of a launch calls it with the same arguments.

    `shard` (--shard i/n) restricts the launch to every n-th row from the i-th; under accelerate
    it is split again among the launch's processes. `aliases`: column names (default: decompose's
    flags, jobs.decompose_aliases).
    """
    from tqdm.auto import tqdm

    from .html import write_index
    from .runner import RowRunner
    from .shard import Processes
    from .summary import format_seconds, summary_table, totals_lines

    options = options or BatchOptions()
    table = read_jobs(jobs, aliases)
    _check_eval(table, options)
    processes = Processes()
    if processes.cpu and not options.overrides.get("train.device"):  # accelerate launch --cpu: train there
        options = dataclasses.replace(options, overrides={**options.overrides, "train.device": "cpu"})
    launch = shard or Shard()
    part = launch.split(processes.index, processes.count)
    mine = part.take(table)
    layout = Layout(out)
    layout.out.mkdir(parents=True, exist_ok=True)
    runner = RowRunner(layout, options, str(processes), step_progress=options.progress and processes.count == 1)
    print(f"{processes}: {len(mine)} of {len(table)} rows (shard {part}) into {layout.out}", flush=True)
    results = []
    bar = tqdm(total=len(mine), desc=f"batch {processes.index}/{processes.count}", unit="image",
               position=processes.local_index, disable=not options.progress, dynamic_ncols=True, file=sys.stderr)
    for job in mine:
        status, action = runner.run(job)
        results.append(status)
        if action is not None:
            tail = f": {status.error}" if status.status is Status.FAILED else \
                f" in {format_seconds(status.seconds)}" if action in ("done", "resumed") else ""
            tqdm.write(f"{job.id}: {action}{tail}", file=sys.stdout)
        bar.set_postfix({s.value: sum(r.status is s for r in results) for s in (Status.DONE, Status.FAILED)},
                        refresh=False)
        bar.update(1)
    bar.close()
    processes.wait_for_all()
    rows: list[RowStatus] = []
    if processes.is_main:
        everything = read_statuses(layout, table)
        rows = launch.take(everything)
        write_index(layout, everything)
        print(summary_table(rows, TABLE_ROWS, processes.count))
        if shard is not None:
            print(f"whole batch ({len(table)} rows, every shard): " + "; ".join(totals_lines(everything)[:1]))
        print(f"results page: {layout.index_html}", flush=True)
    processes.wait_for_all()  # the main process has printed before any process exits
    processes.close()
    return BatchResult(rows, results, processes.is_main)


def batch_status(jobs: str | Path, out: str | Path, aliases: dict[str, str] | None = None,
                 write_html: bool = True) -> list[RowStatus]:
    """Every row's status, read from `out` (any time, from any machine that sees it); with
    `write_html`, runs/index.html is refreshed too."""
    from .html import write_index

    layout = Layout(out)
    statuses = read_statuses(layout, read_jobs(jobs, aliases))
    if write_html and layout.out.is_dir():
        write_index(layout, statuses)
    return statuses
