"""Small ones: one line each instead of a traceback or a wrong word."""

import os
import shutil
import subprocess
import sys

import pytest

from unziplora.errors import UnZipLoRAError


def test_info_into_a_closed_pipe_ends_quietly(tiny_run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-m", "unziplora.app.cli", "info", str(tiny_run.path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    child.stdout.close()  # `| head -0`: the reader is gone before anything is written
    err = child.stderr.read().decode()
    assert child.wait() == 0 and "BrokenPipeError" not in err and "Traceback" not in err, err


def test_a_run_deleted_while_generating_gets_no_samples_recreated(tiny_run, tmp_path):
    from unziplora.generate import generate

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)

    def delete_it(done, total):  # the page's user deletes the run mid-generation
        if run.exists():
            shutil.rmtree(run)

    with pytest.raises(UnZipLoRAError, match="was deleted while generating"):
        generate("a <c>", None, "content", run=run, steps=1, seeds=[0], on_step=delete_it)
    assert not run.exists()


def test_a_resumed_run_counts_the_time_of_every_process(tiny_base, tiny_image, tmp_path, monkeypatch):
    import time

    from unziplora.core.callbacks import Callback
    from unziplora.core.train import Trainer
    from unziplora.decompose import decompose
    from unziplora.errors import TrainingInterrupted

    from ..conftest import tiny_config

    class StopAt4(Callback):
        def on_step(self, loop, log):
            loop.should_stop = loop.should_stop or loop.step == 4

    config = tiny_config(tiny_base, **{"train.steps": 8, "train.checkpoint_every": 2})
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: (time.sleep(1.0), step(self))[1])  # a slow first process
    with pytest.raises(TrainingInterrupted):
        decompose(tiny_image, tmp_path / "run", config, progress=False, callbacks=[StopAt4()])
    monkeypatch.setattr(Trainer, "train_step", step)
    run = decompose(tiny_image, tmp_path / "run", config, progress=False, resume=True)
    timings = run.manifest.timings
    assert timings["total_s"] >= 4.0  # the first process alone slept 4 s
    assert timings["earlier_processes_s"] >= 4.0
