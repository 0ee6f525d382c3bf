"""One row of a batch: skip it, resume it or run it, and record how it ended.

The row's work is `decompose.decompose` (and, with --eval, the row's scores), under the row's lock
(state.py): a second process reaching the same row, from this launch or another one, sees it
running and moves on. What decompose guarantees for one run makes the batch safe to kill at any
moment: OUT.partial is renamed to OUT only when complete, with a checkpoint every
train.checkpoint_every steps to resume from. An error ends only its row: its one line goes to
failed.json and the next row starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...run.checkpoint import CHECKPOINT_DIR, read_record
from ...errors import TrainingInterrupted, UnZipLoRAError
from ...run.manifest import MANIFEST_FILE
from ...methods import Method, plugin
from ...run.lock import RunInProgress
from .evaluate import Evaluation
from .jobs import Job
from .state import (EventLog, Layout, RowStatus, Status, clear_failure, read_failure, read_scores, read_status,
                    write_failure)

ERROR_CHARS = 300


@dataclass
class BatchOptions:
    """What every row of a batch gets unless its own columns say otherwise."""

    overrides: dict[str, Any] = field(default_factory=dict)  # decompose's options, dotted keys (None: unset)
    config_file: str | Path | None = None
    method: str = Method.UNZIPLORA.value
    retry_failed: bool = False  # rerun the rows that failed (by default a failed row stays failed)
    force: bool = False  # start interrupted rows over instead of resuming them
    allow_large_resolution: bool = False  # train rows at more than twice the base model's own size
    evaluation: Evaluation | None = None
    progress: bool = True


def row_config(job: Job, options: BatchOptions):
    """(method, ResolvedConfig) of a row: the batch's options with the row's columns on top; a
    row's config file replaces the batch's --config."""
    from ...methods import resolve_config

    if job.error:
        raise UnZipLoRAError(job.error)
    method = job.method or options.method
    given = {k: v for k, v in options.overrides.items() if v is not None}
    resolved = resolve_config({**given, **job.overrides}, job.config or options.config_file, method)
    prompts = resolved.config.prompts
    if not prompts.subject.strip() or not prompts.style.strip():
        raise UnZipLoRAError(f"{job.where}: no subject or no style; fill its subject and style columns, or pass "
                             "--subject and --style for every row")
    return method, resolved


def one_line(exc: BaseException) -> str:
    """An exception as the one line failed.json keeps: ours as they are, others with their type."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if not isinstance(exc, UnZipLoRAError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


@contextlib.contextmanager
def row_output(path: Path, header: str):
    """What a row prints (decompose's notes, Python warnings) goes to its log.txt, not the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(f"== {header}\n")
        fh.flush()

        def show(message, category, filename, lineno, file=None, line=None):
            fh.write(warnings.formatwarning(message, category, filename, lineno, line))

        with warnings.catch_warnings(), contextlib.redirect_stdout(fh):
            warnings.showwarning = show
            yield


def free_memory() -> None:
    """After a failed row (out of memory above all), give its tensors back before the next row."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class RowRunner:
    """Runs the rows of one process, logging each start and end to its EventLog."""

    def __init__(self, layout: Layout, options: BatchOptions, process: str, step_progress: bool):
        self.layout, self.options, self.process = layout, options, process
        self.step_progress = step_progress  # decompose's own bar: only where one process has the console
        self.events = EventLog(layout, process)

    def run(self, job: Job) -> tuple[RowStatus, str | None]:
        """The row's status after this process looked at it, and what it did ('done', 'resumed',
        'failed', 'evaluated'; None: nothing to do here)."""
        status = read_status(self.layout, job)
        if status.status is Status.RUNNING:
            return status, None
        if status.status is Status.FAILED and not self.options.retry_failed:
            return status, None
        if status.status is Status.DONE and not self._needs_eval(job):
            return status, None
        lock = self.layout.row_lock(job)
        self.layout.row_dir(job).mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except RunInProgress:  # another process took it since we looked
            return read_status(self.layout, job), None
        try:
            action = self._attempt(job)
        except KeyboardInterrupt:  # Ctrl-C: decompose kept the row's checkpoint; the batch command resumes it
            raise TrainingInterrupted(f"interrupted in row {job.id}; run the same command again: finished rows are "
                                      "skipped, interrupted ones resume from their checkpoint") from None
        finally:
            lock.release()
        return read_status(self.layout, job), action

    def _needs_eval(self, job: Job) -> bool:
        evaluation = self.options.evaluation
        if evaluation is None:
            return False
        from ...run.folder import RunFolder

        record = read_scores(self.layout, job)
        failure = read_failure(self.layout, job)
        if failure and failure.get("stage") == "eval" and not self.options.retry_failed:
            return False
        try:
            return record is None or record.get("key") != evaluation.key(RunFolder.open(self.layout.run_dir(job)))
        except UnZipLoRAError:
            return False

    def _attempt(self, job: Job) -> str | None:
        t0 = time.perf_counter()
        run_dir = self.layout.run_dir(job)
        finished = (run_dir / MANIFEST_FILE).is_file()
        if finished and not self._needs_eval(job):  # done by another process between our look and our lock
            return None
        stage, action = ("eval", "evaluated") if finished else ("decompose", "done")
        header = f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')} {self.process}: {stage}"
        try:
            if not finished:
                action = self._decompose(job, header)
            if self.options.evaluation is not None:
                stage = "eval"
                with row_output(self.layout.log_file(job), f"{header} (eval)"):
                    scores = self.options.evaluation.score(run_dir, self.layout.scores_file(job))
                self.events.write("evaluated", job, scores=scores)
        except (KeyboardInterrupt, SystemExit):
            raise
        except RunInProgress:  # a decompose of the same folder outside this batch
            return None
        except Exception as exc:  # noqa: BLE001: any failure ends only its row
            error = one_line(exc)
            del exc  # drop the traceback's frames (and the tensors they hold) before freeing memory
            seconds = time.perf_counter() - t0
            write_failure(self.layout, job, error, stage, seconds, self.process)
            self.events.write("failed", job, stage=stage, error=error, seconds=round(seconds, 3))
            free_memory()
            return "failed"
        clear_failure(self.layout, job)
        return action

    def _decompose(self, job: Job, header: str) -> str:
        from ...decompose import decompose

        method, resolved = row_config(job, self.options)
        run_dir = self.layout.run_dir(job)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UnZipLoRAError(f"{run_dir} exists and holds no finished run; move it away: the batch writes "
                                 f"row {job.id}'s run there")
        resume, force, step = self._plan(job, Method(method))
        self.events.write("start", job, method=method, resume=resume, from_step=step)
        t0 = time.perf_counter()
        with row_output(self.layout.log_file(job), header):
            decompose(job.image, self.layout.run_dir(job), resolved.config, method=method, force=force,
                      resume=resume, progress=self.step_progress, sources=resolved.sources,
                      allow_large_resolution=self.options.allow_large_resolution)
        self.events.write("done", job, seconds=round(time.perf_counter() - t0, 3))
        return "resumed" if resume else "done"

    def _plan(self, job: Job, method: Method) -> tuple[bool, bool, int | None]:
        """(resume, force, the step it resumes after) for decompose.

        An interrupted <id>.partial with a checkpoint (or with every output) is resumed; one killed
        before its first checkpoint holds nothing and starts over, as does any with --force. A
        checkpoint that cannot be read or belongs to other settings is decompose's to refuse: the
        row fails with its line, and --retry-failed --force starts it over.
        """
        work = self.layout.partial(job)
        if not plugin(method).resumable or not work.is_dir():
            return False, False, None
        if self.options.force:
            return False, True, None
        if (work / MANIFEST_FILE).is_file():
            return True, False, None
        try:
            record = read_record(work / CHECKPOINT_DIR)
        except UnZipLoRAError:
            return True, False, None  # decompose says why it cannot resume
        if record is None:
            return False, True, None
        return True, False, record["step"]
