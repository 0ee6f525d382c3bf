"""What a batch's output folder holds, and each row's status read from it (no other state).

    runs/
      <id>/                     a finished run (decompose's run folder; its manifest written last)
      <id>/eval/scores.json     with --eval: the row's scores (and the images they score)
      <id>.partial/             a run in progress, or an interrupted one that the next launch resumes
      index.html                the results page (html.py)
      .batch/rows/<id>/         the row's lock (held while a process works on it), its failure
                                record failed.json, and log.txt (what decompose printed)
      .batch/events/HOST-PID.jsonl   what each process started, finished or failed, and when

A row is done when its run folder has a manifest; running while a live process holds its lock
(or decompose's lock on <id>.partial); failed when failed.json is there; pending otherwise.
Everything is read from the file system, so any process, on any machine that sees `runs/`, can
tell where the batch stands (`unziplora batch --status`).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ...run.checkpoint import CHECKPOINT_DIR, read_record
from ...errors import UnZipLoRAError
from ...run.manifest import MANIFEST_FILE
from ...run.folder import RunFolder, glob_escape, partial_dir, write_text_atomic
from ...run.lock import WorkLock
from .jobs import Job

BATCH_DIR = ".batch"
FAILED_FILE = "failed.json"
SCORES_FILE = "scores.json"


class Status(str, enum.Enum):
    DONE = "done"
    RUNNING = "running"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True)
class RowStatus:
    job: Job
    status: Status
    seconds: float | None = None  # done: the run's total time; failed: the time until it failed
    error: str | None = None
    detail: str = ""  # e.g. "resumes at step 200", "pid 12 on node3, since ..."
    scores: dict | None = None  # --eval: {metric: value}


class Layout:
    """The paths of one batch's output folder."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    def run_dir(self, job: Job) -> Path:
        return self.out / job.id

    def partial(self, job: Job) -> Path:
        return partial_dir(self.run_dir(job))

    def row_dir(self, job: Job) -> Path:
        return self.out / BATCH_DIR / "rows" / job.id

    def failed_file(self, job: Job) -> Path:
        return self.row_dir(job) / FAILED_FILE

    def log_file(self, job: Job) -> Path:
        return self.row_dir(job) / "log.txt"

    def scores_file(self, job: Job) -> Path:
        return self.run_dir(job) / "eval" / SCORES_FILE

    def row_lock(self, job: Job) -> WorkLock:
        return WorkLock(self.row_dir(job))

    @property
    def events_dir(self) -> Path:
        return self.out / BATCH_DIR / "events"

    @property
    def index_html(self) -> Path:
        return self.out / "index.html"


def hidden_work_folders(layout: Layout) -> dict[str, list[Path]]:
    """Row id -> the hidden work folders (.ID.partial-XXXX) baselines write in, listed in one pass."""
    found: dict[str, list[Path]] = {}
    if layout.out.is_dir():
        for path in layout.out.glob(".*.partial-*"):
            found.setdefault(path.name[1:].rsplit(".partial-", 1)[0], []).append(path)
    return found


def running_holder(layout: Layout, job: Job, hidden: dict[str, list[Path]] | None = None):
    """The live process working on this row (the batch's row lock, decompose's lock on <id>.partial,
    a baseline's hidden work folder), or None. `hidden`: hidden_work_folders, for many rows."""
    run = layout.run_dir(job)
    candidates = [layout.row_dir(job), layout.partial(job)]
    if hidden is not None:
        candidates += hidden.get(job.id, [])
    elif run.parent.is_dir():
        candidates += sorted(run.parent.glob(f".{glob_escape(run.name)}.partial-*"))
    for folder in candidates:
        holder = WorkLock(folder).holder()
        if holder is not None:
            return holder
    return None


def read_failure(layout: Layout, job: Job) -> dict | None:
    try:
        record = json.loads(layout.failed_file(job).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_scores(layout: Layout, job: Job) -> dict | None:
    """The record --eval wrote for this row ({"key", "kind", "scores"}), or None."""
    try:
        record = json.loads(layout.scores_file(job).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("scores"), dict) else None


def interrupted_at(layout: Layout, job: Job) -> str:
    """How far an interrupted <id>.partial got: 'resumes after step N', or why it cannot."""
    work = layout.partial(job)
    if (work / MANIFEST_FILE).is_file():
        return "interrupted while finishing; resumes"
    try:
        record = read_record(work / CHECKPOINT_DIR)
    except UnZipLoRAError as exc:
        return f"interrupted: {exc}"
    return f"interrupted; resumes after step {record['step']}" if record else "interrupted before its first checkpoint"


def read_status(layout: Layout, job: Job, hidden: dict[str, list[Path]] | None = None) -> RowStatus:
    """This row's status from the file system (`hidden`: see running_holder)."""
    run = layout.run_dir(job)
    if (run / MANIFEST_FILE).is_file():
        try:
            manifest = RunFolder.open(run).manifest
        except UnZipLoRAError as exc:
            return RowStatus(job, Status.FAILED, error=f"the finished run is damaged: {exc}")
        scores = read_scores(layout, job)
        seconds = manifest.timings.get("total_s")
        running = running_holder(layout, job, hidden)  # being evaluated
        if running is not None:
            return RowStatus(job, Status.RUNNING, seconds, detail=f"evaluating: {running.describe()}")
        failure = read_failure(layout, job)  # a record of its decompose is stale: the run finished since
        if failure is not None and failure.get("stage") == "eval":
            return RowStatus(job, Status.FAILED, seconds, f"eval: {failure.get('error', 'failed')}",
                             detail=f"attempt {failure.get('attempts', 1)}")
        return RowStatus(job, Status.DONE, seconds, scores=scores["scores"] if scores else None)
    holder = running_holder(layout, job, hidden)
    if holder is not None:
        return RowStatus(job, Status.RUNNING, detail=holder.describe())
    failure = read_failure(layout, job)
    if failure is not None:
        return RowStatus(job, Status.FAILED, failure.get("seconds"), str(failure.get("error", "failed")),
                         detail=f"attempt {failure.get('attempts', 1)}")
    if job.error:
        return RowStatus(job, Status.PENDING, error=job.error)
    detail = interrupted_at(layout, job) if layout.partial(job).is_dir() else ""
    return RowStatus(job, Status.PENDING, detail=detail)


def read_statuses(layout: Layout, jobs: list[Job]) -> list[RowStatus]:
    """Every row's status, the folder listed once (not once per row: a batch may hold 10,000)."""
    hidden = hidden_work_folders(layout)
    return [read_status(layout, job, hidden) for job in jobs]


def write_failure(layout: Layout, job: Job, error: str, stage: str, seconds: float, process: str) -> None:
    """failed.json: the row's one-line error, at which stage (decompose or eval), when, where, and
    the attempt count."""
    before = read_failure(layout, job) or {}
    record = {
        "id": job.id, "error": error, "stage": stage, "seconds": round(seconds, 3),
        "when": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(), "pid": os.getpid(), "process": process,
        "attempts": int(before.get("attempts", 0)) + 1,
    }
    layout.row_dir(job).mkdir(parents=True, exist_ok=True)
    write_text_atomic(layout.failed_file(job), json.dumps(record, indent=2))


def clear_failure(layout: Layout, job: Job) -> None:
    layout.failed_file(job).unlink(missing_ok=True)


class EventLog:
    """This process's own JSON-lines log (one writer per file: no interleaving, on any file system)."""

    def __init__(self, layout: Layout, process: str):
        self.path = layout.events_dir / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self.process = process

    def write(self, event: str, job: Job, **fields) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": dt.datetime.now().astimezone().isoformat(timespec="milliseconds"), "event": event,
                  "row": job.id, "process": self.process, "pid": os.getpid(), **fields}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_events(layout: Layout) -> list[dict]:
    """Every event every process logged, oldest first."""
    events = []
    for path in sorted(layout.events_dir.glob("*.jsonl")) if layout.events_dir.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # the last line of a process killed while writing it
                continue
    return sorted(events, key=lambda e: e.get("time", ""))
