"""Two users of the web page never share a run; a job cancelled before it starts leaves nothing behind."""

import threading

import pytest

from unziplora.app.ui.jobs import JobState, Worker
from unziplora.app.ui.runs import RunsFolder
from unziplora.app.ui.tasks import DecomposeRequest, submit_decompose
from unziplora.errors import UnZipLoRAError


class Recorder:
    """A worker that only records what was queued (nothing trains)."""

    def __init__(self):
        self.jobs = []

    def submit(self, kind, title, work, target=None, progress=None, on_cancel=None):
        self.jobs.append(target)
        return target


def request():
    return DecomposeRequest(subject="cat", style="sketch", steps=6, rank=4, resolution=32, previews=0)


def race(runs, tiny_base, upload, names, monkeypatch, wait: float = 3.0):
    """Two sessions submit at the same moment; both are held at the point where they write the
    kept image, so a check-then-claim would let both through. `wait`: how long the first waits for
    the second (both arrive when neither is refused: long enough for a loaded machine)."""
    worker, errors = Recorder(), []
    barrier = threading.Barrier(2)
    keep = RunsFolder.keep_request

    def held(self, *args, **kwargs):
        try:
            barrier.wait(timeout=wait)  # a second session that was refused earlier never arrives
        except threading.BrokenBarrierError:
            pass
        return keep(self, *args, **kwargs)

    monkeypatch.setattr(RunsFolder, "keep_request", held)

    def session(name):
        try:
            submit_decompose(worker, runs, str(tiny_base), upload, name, request(), 2**20)
        except UnZipLoRAError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=session, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return worker.jobs, errors


def test_two_sessions_asking_for_one_name_get_it_once(tiny_base, upload, tmp_path, monkeypatch):
    runs = RunsFolder(tmp_path / "runs")
    jobs, errors = race(runs, tiny_base, upload, ["same", "same"], monkeypatch)
    assert jobs == ["same"] and len(errors) == 1 and "choose another name" in errors[0]


def test_two_sessions_without_a_name_get_two_names(tiny_base, upload, tmp_path, monkeypatch):
    runs = RunsFolder(tmp_path / "runs")
    jobs, errors = race(runs, tiny_base, upload, ["", ""], monkeypatch, wait=120)
    assert not errors and sorted(jobs) == ["cat-sketch", "cat-sketch-2"]


def test_a_decompose_cancelled_before_it_starts_frees_its_name(tiny_base, upload, tmp_path):
    runs, worker, gate = RunsFolder(tmp_path / "runs"), Worker(), threading.Event()
    try:
        worker.submit("generate", "busy", lambda job: gate.wait(10))
        job = submit_decompose(worker, runs, str(tiny_base), upload, "cat", request(), 2**20)
        worker.cancel(job.id)
        assert job.state is JobState.CANCELLED
        again = submit_decompose(worker, runs, str(tiny_base), upload, "cat", request(), 2**20)  # not blocked
        worker.cancel(again.id)
        assert not runs.pending("cat").exists()
    finally:
        gate.set()
        worker.close()
