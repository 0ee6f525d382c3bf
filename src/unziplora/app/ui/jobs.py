"""The page's background worker: one job at a time per process, the others wait in a queue.

A job is a function of the `Job` it runs in: it reports progress (`Job.report`), reads
`Job.cancel_requested` (callbacks.StopOnRequest turns it into a stop between steps) and returns
its result. Whatever it prints (the API's `note:` and `warning:` lines) is kept as the job's
notes. An UnZipLoRAError becomes the job's one-line error, the same text the command line prints;
a cancelled training ends as the API's TrainingInterrupted does, with where its checkpoint is.
"""

from __future__ import annotations

import enum
import io
import itertools
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ...core.callbacks import Progress
from ...errors import UnZipLoRAError

# One job at a time in this process, however many workers (pages) it has: training and
# generation each want every core and the whole accelerator.
_ONE_AT_A_TIME = threading.Lock()


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    """One unit of work and everything the page shows of it."""

    id: int
    kind: str  # "decompose" or "generate"
    title: str
    work: Callable[["Job"], Any]
    target: str | None = None  # the run a decompose job writes
    state: JobState = JobState.QUEUED
    progress: Progress | None = None
    notes: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    on_cancel: Callable[[], None] | None = None  # releases what submitting claimed, if the job never runs
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def report(self, progress: Progress) -> None:
        self.progress = progress

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()


class Worker:
    """A daemon thread that runs submitted jobs in order, one at a time."""

    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition()
        self._ids = itertools.count(1)
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="unziplora-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, title: str, work: Callable[[Job], Any], target: str | None = None,
               progress: Progress | None = None, on_cancel: Callable[[], None] | None = None) -> Job:
        """Queue `work`; `target` is the run it writes, `progress` what the bar shows while it waits,
        `on_cancel` what to undo if it is cancelled before it starts (a claimed run name)."""
        with self._wake:
            job = Job(next(self._ids), kind, title, work, target, progress=progress, on_cancel=on_cancel)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._wake.notify()
        return job

    def get(self, job_id: int | None) -> Job | None:
        return self._jobs.get(job_id) if job_id is not None else None

    def cancel(self, job_id: int | None) -> str:
        """A waiting job leaves the queue; a running one is asked to stop (training stops between steps)."""
        with self._wake:
            job = self.get(job_id)
            if job is None or job.state.finished:
                return "nothing to cancel"
            job.cancel_event.set()
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish(job, JobState.CANCELLED, "cancelled before it started")
                return f"{job.title}: cancelled before it started"
            return f"{job.title}: cancelling after the current step"

    @property
    def running(self) -> Job | None:
        return self._running

    def waiting(self) -> list[Job]:
        with self._wake:
            return list(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs; ask the running one to stop and wait until it has (`timeout`: at most that long).

        A job loading the model reaches its first step before it can stop; the process must not end
        under it, or its half-written run folder is left behind and the interpreter aborts."""
        with self._wake:
            self._closed = True
            for job in list(self._queue):
                self._finish(job, JobState.CANCELLED, "the page closed")
            self._queue.clear()
            running = self._running
            if running is not None:
                running.cancel_event.set()
            self._wake.notify_all()
        self._thread.join(1.0 if timeout is None else min(1.0, timeout))
        if self._thread.is_alive() and running is not None:
            print(f"stopping: waiting for {running.title} to reach a step it can stop at", file=sys.__stderr__,
                  flush=True)
            self._thread.join(None if timeout is None else max(0.0, timeout - 1.0))

    # ----- the thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._running = job
                job.state, job.started = JobState.RUNNING, time.time()
            try:
                with _ONE_AT_A_TIME, _notes_of(job):
                    result = job.work(job)
            except UnZipLoRAError as exc:
                self._finish(job, JobState.FAILED, str(exc))
            except KeyboardInterrupt as exc:  # a requested stop: TrainingInterrupted says where the checkpoint is
                self._finish(job, JobState.CANCELLED, str(exc) or "cancelled; nothing was written")
            except Exception as exc:  # a bug, not bad input: one line on the page, the traceback on the terminal
                traceback.print_exc()
                self._finish(job, JobState.FAILED, f"unexpected error ({type(exc).__name__}: {exc}); "
                                                   "the terminal running `unziplora ui` has the details")
            else:
                job.result = result
                self._finish(job, JobState.DONE)
            finally:
                self._running = None

    @staticmethod
    def _finish(job: Job, state: JobState, error: str | None = None) -> None:
        if state is JobState.CANCELLED and job.started is None and job.on_cancel is not None:
            job.on_cancel()  # it never ran: nothing of it may block its run name
        job.error, job.finished = error, time.time()
        job.state = state  # last: whoever sees a finished state sees its error and result too


# ----- what a job prints ----------------------------------------------------------------------
class _ThreadRouter(io.TextIOBase):
    """A stand-in for sys.stdout / sys.stderr: lines printed by a thread that runs a job go to that
    job's notes (and still to the terminal); every other thread writes through unchanged."""

    def __init__(self, terminal):
        self.terminal = terminal
        self.jobs: dict[int, Job] = {}  # thread id -> job
        self.partial: dict[int, str] = {}

    def write(self, text: str) -> int:
        job = self.jobs.get(threading.get_ident())
        if job is not None:
            buffered = self.partial.pop(threading.get_ident(), "") + text
            *lines, rest = buffered.split("\n")
            job.notes.extend(line.strip() for line in lines if line.strip() and "\r" not in line)
            if rest:
                self.partial[threading.get_ident()] = rest
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return False


class _notes_of:
    """Route the current thread's prints into `job.notes` while the job runs, then put the
    streams back (one job runs at a time, so one router per stream is enough)."""

    def __init__(self, job: Job):
        self.job = job
        self.routers: dict[str, _ThreadRouter] = {}

    def __enter__(self):
        for name in ("stdout", "stderr"):
            router = _ThreadRouter(getattr(sys, name))
            router.jobs[threading.get_ident()] = self.job
            setattr(sys, name, router)
            self.routers[name] = router

    def __exit__(self, *exc):
        for name, router in self.routers.items():
            router.jobs.clear()
            if getattr(sys, name) is router:  # unless someone replaced it meanwhile
                setattr(sys, name, router.terminal)
        return False
