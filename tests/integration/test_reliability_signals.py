"""Signals as a scheduler sends them: SIGTERM saves a checkpoint as Ctrl-C does, a stop before
anything was written leaves nothing that blocks a rerun, a stop while outputs are written keeps
the trained steps, an interrupted generate keeps its finished images."""

import json
import signal
import subprocess
import sys
import time

import pytest

from unziplora.app.cli import main
from unziplora.run.folder import partial_dir

from .test_resume import argv_in, record_step, run_child

SLOW_LOAD = """
import sys, time
from unziplora.models.base import BaseModel
from unziplora.app.cli import main
def slow(self, *args, **kwargs):
    print("loading", flush=True)
    time.sleep(120)
BaseModel.load = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def cli_args(tiny_base, tiny_image, tmp_path):
    return argv_in(tmp_path, tiny_base, tiny_image)


def test_sigterm_mid_training_saves_a_checkpoint_and_resume_finishes(cli_args, tmp_path):
    out = tmp_path / "run"
    child = run_child(cli_args(out), sleep=0.4)
    deadline = time.monotonic() + 300
    while (record_step(out) or 0) < 2:
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "--resume" in err and "checkpoint of step" in err
    assert main(cli_args(out, "--resume")) == 0
    assert (out / "manifest.json").is_file() and not partial_dir(out).exists()


def test_sigterm_before_anything_is_written_blocks_no_rerun(cli_args, tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, *cli_args(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "loading"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert not partial_dir(out).exists()
    assert main(cli_args(out)) == 0


def test_a_partial_holding_only_a_dead_writers_lock_blocks_nothing(cli_args, tmp_path):
    out = tmp_path / "run"
    partial_dir(out).mkdir()
    (partial_dir(out) / ".lock").write_text(json.dumps({"pid": 999999, "host": "x", "since": ""}))
    assert main(cli_args(out)) == 0
    assert (out / "manifest.json").is_file()


def test_a_stop_while_the_outputs_are_written_keeps_every_trained_step(cli_args, tmp_path, monkeypatch, capsys):
    from unziplora.methods.unziplora import UnZipLoRA

    write, calls = UnZipLoRA.write_weights, []

    def stopped_once(self, loop, folder):
        calls.append(loop.step)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return write(self, loop, folder)

    monkeypatch.setattr(UnZipLoRA, "write_weights", stopped_once)
    out = tmp_path / "run"
    assert main(cli_args(out)) == 130
    err = capsys.readouterr().err
    assert "all 8 steps are trained" in err and "checkpoint of step 8" in err and "nothing was written" not in err
    assert main(cli_args(out, "--resume")) == 0
    assert calls == [8, 8] and (out / "manifest.json").is_file()


def test_an_interrupted_generate_keeps_the_finished_seeds(tiny_run, tmp_path):
    from unziplora.generate import generate

    def stop_in_second_seed(done, total):
        if done > total // 3:
            raise KeyboardInterrupt("stopped by SIGTERM")

    out = tmp_path / "g"
    with pytest.raises(KeyboardInterrupt, match="1 of 3 seeds finished before are in"):
        generate("a <c>", out, "content", run=tiny_run.path, steps=2, seeds=[7, 8, 9], on_step=stop_in_second_seed)
    assert sorted(p.name for p in out.iterdir()) == ["generation.json", "grid.png", "seed7_0.png"]
    assert json.loads((out / "generation.json").read_text())["seeds"] == [7]
