"""The page's worker and tasks without a browser: one job at a time, cancel keeps the checkpoint,
resume finishes, errors are the command line's one line, nothing escapes the runs folder."""

import threading
import time

import numpy as np
import pytest
import torch

from unziplora.core.callbacks import Progress
from unziplora.app.cli import main
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.run.outputs import partial_dir
from unziplora.run.folder import RunFolder
from unziplora.core.train import Trainer
from unziplora.app.ui.jobs import Job, JobState, Worker
from unziplora.app.ui.runs import RunsFolder
from unziplora.app.ui.tasks import DecomposeRequest, GenerateRequest, submit_decompose, submit_generate, submit_resume

from ..conftest import tiny_config

pytest.importorskip("gradio", reason="the web page needs gradio: pip install -e '.[ui]'")


def wait(job, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not job.state.finished:
        assert time.monotonic() < deadline, f"{job.title} still {job.state.value}"
        time.sleep(0.02)
    return job


def cancel_at(worker, job, step):
    """Cancel `job` once it has reported `step` steps and wait for it to end; return the progress
    it had reported when it was cancelled."""
    while job.progress is None or job.progress.step < step:
        assert not job.state.finished, job.error
        time.sleep(0.02)
    seen = job.progress
    worker.cancel(job.id)
    wait(job)
    return seen


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close()


def request(**kw):
    values = {"subject": "cat", "style": "sketch", "steps": 6, "rank": 4, "resolution": 32, "previews": 0}
    values.update(kw)
    return DecomposeRequest(**values)


def test_one_job_at_a_time_in_order(worker):
    spans, gate = [], threading.Event()

    def work(name):
        def run(job):
            start = time.monotonic()
            if name == "a":
                gate.wait(5)
            spans.append((name, start, time.monotonic()))
            return name
        return run

    jobs = [worker.submit("generate", name, work(name)) for name in "abc"]
    time.sleep(0.1)
    assert worker.running is jobs[0]
    assert [j.title for j in worker.waiting()] == ["b", "c"]
    gate.set()
    for job in jobs:
        assert wait(job).result == job.title
    assert [s[0] for s in spans] == ["a", "b", "c"]
    assert all(spans[i][2] <= spans[i + 1][1] for i in range(2))  # never two at once


def test_a_waiting_job_can_be_cancelled_and_never_runs(worker):
    gate, ran = threading.Event(), []
    first = worker.submit("generate", "first", lambda job: gate.wait(5))
    second = worker.submit("generate", "second", lambda job: ran.append(True))
    assert "before it started" in worker.cancel(second.id)
    gate.set()
    wait(first)
    assert second.state is JobState.CANCELLED and not ran


def test_errors_are_one_line_and_prints_are_notes(worker):
    def bad_input(job):
        print("note: something the user should read")
        raise UnZipLoRAError("image x.png is not a readable image; re-export it as PNG or JPEG")

    job = wait(worker.submit("generate", "bad", bad_input))
    assert job.state is JobState.FAILED
    assert job.error == "image x.png is not a readable image; re-export it as PNG or JPEG"
    assert job.notes == ["note: something the user should read"]
    bug = wait(worker.submit("generate", "bug", lambda job: {}["missing"]))
    assert bug.state is JobState.FAILED and bug.error.startswith("unexpected error (KeyError")
    assert "\n" not in bug.error


@pytest.fixture
def slow_steps(monkeypatch):
    """Each training step sleeps a little, so a cancel lands mid-run."""
    step = Trainer.train_step

    def slow(self):
        log = step(self)
        time.sleep(0.3)
        return log

    monkeypatch.setattr(Trainer, "train_step", slow)


def test_cancel_keeps_the_checkpoint_and_resume_finishes(worker, tiny_base, upload, tmp_path, slow_steps):
    runs = RunsFolder(tmp_path / "runs")
    reports = []
    job = submit_decompose(worker, runs, str(tiny_base), upload, "cat", request(), 2**20)
    reports.append(cancel_at(worker, job, 2))
    assert job.state is JobState.CANCELLED
    assert "checkpoint of step" in job.error and "kept in" in job.error
    assert runs.interrupted() == ["cat"]
    assert not (runs.root / "cat").exists() and partial_dir(runs.root / "cat").is_dir()
    stopped = job.progress.step
    assert 2 <= stopped < 6

    resumed = wait(submit_resume(worker, runs, str(tiny_base), "cat"))
    assert resumed.state is JobState.DONE, resumed.error
    assert resumed.progress == Progress(6, 6, resumed.progress.loss, 0.0)
    run = RunFolder.open(runs.root / "cat")
    assert run.manifest.steps == 6 and run.manifest.config.train.steps == 6
    assert runs.interrupted() == [] and not runs.pending("cat").exists()
    assert not partial_dir(runs.root / "cat").exists()
    assert reports[0].total == 6 and reports[0].seconds_left > 0


def test_a_cancelled_baseline_writes_nothing(worker, tiny_base, upload, tmp_path, monkeypatch):
    from unziplora.methods import single_lora

    original = single_lora.SingleLoraLoop._mse

    def slow(*args, **kwargs):
        time.sleep(0.2)
        return original(*args, **kwargs)

    monkeypatch.setattr(single_lora.SingleLoraLoop, "_mse", slow)
    runs = RunsFolder(tmp_path / "runs")
    job = submit_decompose(worker, runs, str(tiny_base), upload, "db", request(method="dreambooth-lora", steps=30), 2**20)
    cancel_at(worker, job, 1)
    assert job.state is JobState.CANCELLED
    assert sorted(p.name for p in runs.root.iterdir() if p.name != ".unziplora-ui") == []
    assert not runs.pending("db").exists()


@pytest.mark.parametrize("name", ["../escape", "/tmp/escape", "a/b", "..", ".hidden"])
def test_decompose_refuses_names_that_leave_the_runs_folder(worker, tiny_base, upload, tmp_path, name):
    runs = RunsFolder(tmp_path / "runs")
    with pytest.raises(UnZipLoRAError, match="not allowed"):
        submit_decompose(worker, runs, str(tiny_base), upload, name, request(), 2**20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "upload"]
    assert list(runs.root.iterdir()) == []


def test_a_corrupt_upload_is_the_cli_message(worker, tiny_base, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    runs = RunsFolder(tmp_path / "runs")
    with pytest.raises(UnZipLoRAError) as page_error:
        submit_decompose(worker, runs, str(tiny_base), bad, "x", request(), 2**20)
    monkeypatch.chdir(tmp_path)
    assert main(["decompose", str(bad), "--out", "x", "--subject", "cat", "--style", "sketch",
                 "--base-model", str(tiny_base), "--resolution", "32"]) == 2  # the page's size (request())
    assert capsys.readouterr().err.strip() == f"error: {page_error.value}"
    assert list(runs.root.iterdir()) == []  # nothing queued, nothing kept


def test_uploads_over_the_cap_are_refused(worker, tiny_base, upload, tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    with pytest.raises(UnZipLoRAError, match="the page takes images up to"):
        submit_decompose(worker, runs, str(tiny_base), upload, "x", request(), 100)


def test_generate_every_mode_and_the_cross_base_model_error(worker, tiny_base, tiny_image, tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    config = tiny_config(tiny_base, **{"train.steps": 2, "sample.seeds": [0]})
    decompose(tiny_image, runs.root / "a", config, progress=False)
    decompose(tiny_image.rotate(90), runs.root / "b", config, progress=False)
    for mode in ("content", "style", "both"):
        job = wait(submit_generate(worker, runs, GenerateRequest(mode, "A <c> cat in <s> style", run="a", steps=2)))
        assert job.state is JobState.DONE, job.error
        assert [p.parent.name for p in job.result] == [f"{mode}-001"]
    cross = GenerateRequest("cross", "A <c> cat in <s> style", content_run="a", style_run="b", seeds="3 4", steps=2)
    job = wait(submit_generate(worker, runs, cross))
    assert job.state is JobState.DONE, job.error
    assert [p.name for p in job.result] == ["seed3_0.png", "seed4_0.png"]
    assert job.result[0].parent == runs.root / "a" / "samples" / "cross-001"
    assert (job.progress.step, job.progress.total) == (4, 4)  # the denoising steps were streamed: 2 seeds x 2

    # a run of another base model (a copy of the tiny one at another path): the CLI's refusal
    import shutil

    other_base = shutil.copytree(tiny_base, tmp_path / "other-base")
    decompose(tiny_image, runs.root / "c", tiny_config(other_base, **{"train.steps": 2}), progress=False)
    job = wait(submit_generate(worker, runs, GenerateRequest("cross", "A <c> cat", content_run="a", style_run="c")))
    assert job.state is JobState.FAILED
    assert job.error == "pass --base-model: the sources name different base models"
    with pytest.raises(UnZipLoRAError, match="seeds"):
        submit_generate(worker, runs, GenerateRequest("both", "A <c>", run="a", seeds="1 two"))
    with pytest.raises(UnZipLoRAError, match="not allowed"):
        submit_generate(worker, runs, GenerateRequest("both", "A <c>", run="../a"))
    torch.set_num_threads(1)


def test_a_generation_cancelled_while_it_denoises_stops_and_writes_nothing(worker, tiny_base, tiny_image, tmp_path,
                                                                           monkeypatch):
    runs = RunsFolder(tmp_path / "runs")
    decompose(tiny_image, runs.root / "a", tiny_config(tiny_base, **{"train.steps": 2}), progress=False)
    report = Job.report
    monkeypatch.setattr(Job, "report", lambda self, p: (time.sleep(0.05), report(self, p)))  # slow steps
    job = submit_generate(worker, runs, GenerateRequest("both", "A <c> cat in <s> style", run="a", steps=50))
    cancel_at(worker, job, 2)
    assert job.state is JobState.CANCELLED
    assert job.progress.step < job.progress.total
    assert job.error.startswith("cancelled at denoising step") and "no images were written" in job.error
    assert not (runs.root / "a" / "samples").exists()
    # the worker takes the next job as usual
    done = wait(submit_generate(worker, runs, GenerateRequest("both", "A <c> cat in <s> style", run="a", steps=2)))
    assert done.state is JobState.DONE, done.error
    assert {p.parent.name for p in done.result} == {"both-001"}  # the first folder: the cancelled job took none


def test_the_page_decomposes_generates_and_exports_on_a_flux_base(upload, tmp_path):
    """The page's whole job path with the tiny FLUX.1 folder as its base model: the form's defaults are
    FLUX's, decompose runs on the transformer, the run's result shows FLUX's sampling settings, every
    generation mode draws, and the download is the FLUX exports."""
    from PIL import Image

    from unziplora.app.ui.app import build_page

    from ..pipelines import save_tiny_flux_pipeline

    page, blocks = build_page(tmp_path / "runs", str(save_tiny_flux_pipeline(tmp_path / "tiny-flux")))
    try:
        assert page.on_method("unziplora")[2] == 1024  # FLUX.1's training resolution
        guidance = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "uz-guidance")
        assert guidance.value == 3.5 and "no CFG batch" in guidance.info
        msg, state, _ = page.on_decompose(str(upload), "cat", "sketch", "cat", "unziplora", 4, 4, 64, 0, 2, {})
        assert "queued: decompose cat" in msg, msg
        job = wait(page.worker.get(page._record(state)["job"]), timeout=300)
        assert job.state is JobState.DONE, job.error
        assert RunFolder.open(page.runs.path("cat")).manifest.base_model == page.base_model
        selected = page.on_select_run("cat")
        assert selected[1] is not None and selected[-1] == 3.5  # FLUX.1-dev's guidance, not SDXL's CFG 5
        for mode, sources in (("content", ("cat", None, None)), ("style", ("cat", None, None)),
                              ("both", ("cat", None, None)), ("cross", (None, "cat", "cat"))):
            msg, state = page.on_generate(mode, *sources, "A <c> cat in <s> style", "0", 2, None, 1, state)
            assert "queued" in msg, msg
            job = wait(page.worker.get(page._record(state)["gen"]), timeout=120)
            assert job.state is JobState.DONE, (mode, job.error)
            image = np.asarray(Image.open(job.result[0]), dtype=np.float32)
            assert image.shape == (64, 64, 3) and image.std() > 0, mode
        msg, files = page.on_download("cat", "kohya")
        assert len(files) == 3 and "kohya" in msg
        from unziplora.run.folder import load_safetensors

        assert any(k.startswith("lora_unet_single_blocks_") for k in load_safetensors(files[0]))
    finally:
        page.worker.close()
        blocks.close()
