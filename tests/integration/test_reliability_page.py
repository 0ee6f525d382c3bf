"""The web page's jobs can always be cancelled and its run names never stay blocked: a cancel names
the job, a reloaded page can still cancel its session's jobs, a server stopped while a job loads the
model ends cleanly and leaves nothing behind, and every leftover NAME.partial/ is resumable, listed
to be deleted, or cleaned."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from unziplora.app.ui.jobs import JobState, Worker
from unziplora.app.ui.page import Page
from unziplora.app.ui.views import queue_html
from unziplora.app.ui.runs import PENDING_DIR, RunsFolder
from unziplora.errors import UnZipLoRAError
from unziplora.run.lock import WorkLock
from unziplora.run.outputs import partial_dir

pytest.importorskip("gradio", reason="the web page needs gradio: pip install -e '.[ui]'")


@pytest.fixture
def page(tiny_base, tmp_path):
    page = Page(RunsFolder(tmp_path / "runs"), str(tiny_base), Worker(), 2**20)
    yield page
    page.worker.close(timeout=30)


def decompose(page, upload, name, state):
    """The Decompose button: returns the message and the state the browser keeps."""
    msg, state, _ = page.on_decompose(upload, "cat", "sketch", name, "unziplora", 6, 4, 32, 0, 0, state)
    assert "queued" in msg, msg
    return state


def test_a_cancel_names_the_job_and_a_reloaded_page_still_cancels_its_jobs(page, upload):
    gate = threading.Event()
    page.worker.submit("generate", "another session's job", lambda job: gate.wait(30))
    try:
        state = decompose(page, upload, "first", {})
        state = decompose(page, upload, "second", state)
        first, second = page.session_jobs(state)
        assert f"#{first.id} decompose first" in queue_html(page.worker)  # the queue names each job by id
        assert page.cancel_choices(state)["choices"] == [f"#{first.id} decompose first",
                                                         f"#{second.id} decompose second"]

        page.on_cancel(state, f"#{first.id} decompose first")  # not the latest: the one named
        assert first.state is JobState.CANCELLED and second.state is JobState.QUEUED

        reloaded = page.on_reload(state)  # what the browser kept, in a reloaded page
        assert "error" in page.on_cancel(reloaded, "#1 another session's job")[0]  # not this session's
        page.on_cancel(reloaded, None)  # blank: the latest decompose
        assert second.state is JobState.CANCELLED
        assert not (page.runs.root / PENDING_DIR / "first").exists()  # the names are free again
    finally:
        gate.set()


def test_the_page_keeps_its_state_in_the_browser(page):
    import gradio as gr

    from unziplora.app.ui.layout import build_blocks

    blocks = build_blocks(page)
    kept = [b for b in blocks.blocks.values() if isinstance(b, gr.BrowserState)]
    assert len(kept) == 1  # a gr.State would be lost on a reload, and with it every job id


def test_a_session_kept_from_an_earlier_server_cancels_nothing(page, upload):
    gate = threading.Event()
    page.worker.submit("generate", "busy", lambda job: gate.wait(30))
    try:
        state = decompose(page, upload, "mine", {})
        restarted = Page(page.runs, page.base_model, page.worker, page.max_upload_bytes)  # the ids start again
        assert "nothing to cancel" in restarted.on_cancel(restarted.on_reload(state), None)[0]
        assert page.session_jobs(state)[0].state is JobState.QUEUED
    finally:
        gate.set()


def test_a_poll_that_overlaps_a_click_loses_no_job(page, upload):
    gate = threading.Event()
    page.worker.submit("generate", "busy", lambda job: gate.wait(30))
    try:
        before = page.on_reload({})
        queued = decompose(page, upload, "mine", before)
        after_poll = page.poll(before, None)[0]  # a tick that started before the click ends after it
        assert after_poll.get("session") == queued["session"]
        page.on_cancel(after_poll, None)
        assert page.session_jobs(queued)[0].state is JobState.CANCELLED
    finally:
        gate.set()


SLOW_LOAD_PAGE = """
import sys, time
from unziplora.models.base import BaseModel
from unziplora.app.ui.jobs import Worker
from unziplora.app.ui.page import Page
from unziplora.app.ui.runs import RunsFolder

load = BaseModel.load
def slow(self, *args, **kwargs):
    print("loading", flush=True)
    time.sleep(7)  # longer than the worker used to wait for a job when the page stopped
    return load(self, *args, **kwargs)
BaseModel.load = slow
runs, base, upload = sys.argv[1:]
page = Page(RunsFolder(runs), base, Worker(), 2**20)
msg, state, _ = page.on_decompose(upload, "cat", "sketch", "cat", "unziplora", 6, 4, 32, 0, 0, {})
assert "queued" in msg, msg
try:
    while True:
        time.sleep(0.1)
except KeyboardInterrupt:
    pass
finally:
    page.worker.close()  # as `unziplora ui` does on Ctrl-C
"""


def test_ctrl_c_while_a_job_loads_the_model_ends_cleanly_and_leaves_a_resumable_run(tiny_base, upload, tmp_path):
    runs = tmp_path / "runs"
    child = subprocess.Popen([sys.executable, "-c", SLOW_LOAD_PAGE, str(runs), str(tiny_base), str(upload)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "loading", child.communicate()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=180)
    assert child.returncode == 0, err
    # the job stopped at its first step, as a cancel does: its checkpoint is kept and the page lists it
    assert RunsFolder(runs).interrupted() == ["cat"], sorted(p.name for p in runs.rglob("*"))
    assert RunsFolder(runs).leftovers() == []


def dead_lock(folder):
    """What a killed process leaves: a lock file naming it, held by nobody."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": ""}))


def test_a_server_killed_while_loading_blocks_no_name(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    dead_lock(partial_dir(runs.path("cat")))  # the run's folder holds only its lock
    dead_lock(runs.pending("cat"))  # the page's claim, whose process is gone
    (runs.pending("cat") / "request.json").write_text("{}")
    runs.claim("cat")
    assert not partial_dir(runs.path("cat")).exists()
    assert runs.free_name("cat", "sketch") == "cat-sketch"


def test_a_live_writers_partial_is_never_cleaned(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    work = partial_dir(runs.path("cat"))
    work.mkdir(parents=True)
    lock = WorkLock(work)
    lock.acquire()
    try:
        with pytest.raises(UnZipLoRAError, match="choose another name"):
            runs.claim("cat")
        assert work.is_dir() and "cat" not in runs.leftovers()
        with pytest.raises(UnZipLoRAError, match="being written"):
            runs.discard("cat")
    finally:
        lock.release()


def test_a_partial_the_page_cannot_resume_is_listed_to_be_deleted(page, tmp_path):
    runs = page.runs
    work = partial_dir(runs.path("cli-run"))  # a command line run, interrupted after its first checkpoint
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "state.json").write_text("{}")
    (work / "loss.csv").write_text("step\n")
    listed = page.resume_update()["choices"]
    assert [value for _, value in listed] == ["cli-run"] and "delete it" in listed[0][0]
    assert "command line" in page.on_resume("cli-run", {})[0]
    msg, _ = page.on_discard("cli-run")
    assert "deleted" in msg and not work.exists()
    runs.claim("cli-run")


def test_uploads_are_decoded_a_few_at_a_time_and_the_rest_told_to_wait(page, upload, monkeypatch):
    from unziplora.app.ui import page as page_module
    from unziplora.core import data

    MAX_DECODES = getattr(page_module, "MAX_DECODES", 2)

    release, reading, load = threading.Event(), threading.Semaphore(0), data.load_image

    def slow(path):
        reading.release()
        release.wait(30)
        return load(path)

    monkeypatch.setattr(data, "load_image", slow)
    held = [threading.Thread(target=page.on_upload, args=(str(upload),)) for _ in range(MAX_DECODES)]
    for thread in held:
        thread.start()
    try:
        for _ in held:
            assert reading.acquire(timeout=10)
        answer = []
        extra = threading.Thread(target=lambda: answer.append(page.on_upload(str(upload))))
        extra.start()
        extra.join(5)
        assert answer, "a further upload waited for the others instead of being refused"
        msg, preview, box = answer[0]
        assert "wait a moment" in msg and preview is None and box is None
    finally:
        release.set()
        for thread in held:
            thread.join()
    assert page.on_upload(str(upload))[0] == ""  # the slots are free again


def test_the_pages_temp_files_are_deleted_when_it_stops(tiny_base, tmp_path, monkeypatch):
    import socket

    import httpx

    from unziplora.app.ui.app import serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-cache"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page, blocks, url = serve(tmp_path / "runs", str(tiny_base), port=port, block=False)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post("gradio_api/upload", files={"files": ("photo.png", b"\x89PNG" + b"0" * 100,
                                                                         "image/png")})
        kept = [p for p in (tmp_path / "gradio-cache").rglob("*") if p.is_file()]
        assert response.status_code == 200 and kept
    finally:
        page.worker.close()
        blocks.close()
    assert [p for p in (tmp_path / "gradio-cache").rglob("*") if p.is_file()] == []
