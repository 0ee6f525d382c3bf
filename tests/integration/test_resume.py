"""Nothing lost, nothing half-written: checkpoints, resume after SIGKILL and Ctrl-C, refusals."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from unziplora import runfolder
from unziplora.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FORMAT, RECORD_FILE
from unziplora.cli import main
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.train import Trainer

from ..conftest import tiny_config

OUTPUTS = ("unziplora.safetensors", "content_lora/pytorch_lora_weights.safetensors",
           "style_lora/pytorch_lora_weights.safetensors")

# Runs the CLI in a child process; UNZIPLORA_TEST_SLEEP slows each step so the parent can kill it mid-run.
CHILD = """
import os, sys, time
from unziplora.train import Trainer
from unziplora.cli import main
delay, step = float(os.environ.get("UNZIPLORA_TEST_SLEEP", "0")), Trainer.train_step
def slow(self):
    log = step(self)
    time.sleep(delay)
    return log
Trainer.train_step = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes OpenMP threads wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def assert_same_outputs(first, second):
    for name in OUTPUTS:
        a, b = load_file(str(first / name)), load_file(str(second / name))
        assert a.keys() == b.keys(), name
        for key in a:  # bitwise: same ops in the same order on the same CPU, RNG states restored exactly
            assert torch.equal(a[key], b[key]), f"{name}:{key}"


def record_step(out):
    path = runfolder.partial_dir(out) / CHECKPOINT_DIR / RECORD_FILE
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def cli_args(tiny_base, tiny_image, tmp_path):
    """argv for an 8-step run with refreshes at steps 0, 3, 6 and a checkpoint every 2 steps."""
    image = tmp_path / "in.png"
    tiny_image.save(image)
    config = tmp_path / "run.yaml"
    config.write_text("masks: {refresh_every: 3}\ntrain: {checkpoint_every: 2}\nsample: {steps: 2, seeds: [0]}\n")

    def argv(out, *extra):
        return ["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(out),
                "--base-model", str(tiny_base), "--steps", "8", "--rank", "4", "--resolution", "32",
                "--config", str(config), "--quiet", *extra]

    return argv


def run_child(argv, sleep=0.0, **kwargs):
    # One thread each: two children share this machine, and every child must run the same kernels
    # (same thread count) for the bitwise comparison to hold.
    env = {**os.environ, "UNZIPLORA_TEST_SLEEP": str(sleep), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_after_a_mask_refresh_then_resume_equals_an_uninterrupted_run(cli_args, tmp_path):
    straight = run_child(cli_args(tmp_path / "straight"))
    killed_out = tmp_path / "killed"
    child = run_child(cli_args(killed_out), sleep=0.5)
    deadline = time.monotonic() + 300
    while (record_step(killed_out) or 0) < 4:  # the checkpoint after step 4 (refresh was at step 3)
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not killed_out.exists() and record_step(killed_out) in (4, 6)

    resumed = run_child(cli_args(killed_out, "--resume"))
    assert resumed.wait() == 0, resumed.communicate()
    assert straight.wait() == 0, straight.communicate()
    assert_same_outputs(tmp_path / "straight", killed_out)
    assert not runfolder.partial_dir(killed_out).exists()
    assert not (killed_out / CHECKPOINT_DIR).exists()
    assert len((killed_out / "loss.csv").read_text().splitlines()) == 1 + 8  # history survived the kill


def test_ctrl_c_saves_a_checkpoint_and_resume_completes(tmp_path, capsys, monkeypatch, cli_args):
    step = Trainer.train_step

    def interrupted_at_3(self):
        log = step(self)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends; handled between steps
        return log

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_3)
    out = tmp_path / "run"
    assert main(cli_args(out, "--checkpoint-every", "0")) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "step 3" in err and "Traceback" not in err
    assert record_step(out) == 3 and not out.exists()

    assert main(cli_args(out)) == 2  # a leftover OUT.partial is refused without --resume / --force
    assert "pass --resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(cli_args(out, "--resume")) == 0
    assert main(cli_args(tmp_path / "straight")) == 0
    assert_same_outputs(tmp_path / "straight", out)


def test_resume_refusals(cli_args, tiny_base, tiny_image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(cli_args(out, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err

    monkeypatch.setattr(Trainer, "train_step", _nan_at(3))
    assert main(cli_args(out)) == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err and "checkpoint of step 2" in err
    assert record_step(out) == 2 and not out.exists()  # the last good checkpoint is kept
    monkeypatch.undo()

    changed = cli_args(out, "--resume")
    changed[changed.index("--rank") + 1] = "2"
    assert main(changed) == 2
    assert "another config" in capsys.readouterr().err
    other = tmp_path / "other.png"
    tiny_image.rotate(90).save(other)
    assert main([str(other) if a.endswith("in.png") else a for a in map(str, cli_args(out, "--resume"))]) == 2
    assert "another image" in capsys.readouterr().err
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_base, other_base)
    (other_base / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "EulerDiscreteScheduler"}')
    moved = cli_args(out, "--resume")
    moved[moved.index("--base-model") + 1] = str(other_base)
    assert main(moved) == 2
    assert "base model" in capsys.readouterr().err
    assert record_step(out) == 2  # a refused resume leaves the checkpoint alone

    monkeypatch.setattr(Trainer, "train_step", _nan_at(0))
    assert main(cli_args(out, "--force")) == 2  # --force discards OUT.partial and starts over
    assert "nan at step 0; no checkpoint was saved" in capsys.readouterr().err
    assert not runfolder.partial_dir(out).exists()  # nothing to resume from, so nothing is kept


def _nan_at(bad_step):
    step = Trainer.train_step

    def train_step(self):
        if self.step == bad_step:
            self.config.masks.orth_weight = float("nan")  # loss = mse + nan * orth
        return step(self)

    return train_step


@pytest.mark.parametrize("failing_call", [1, 2], ids=["first-checkpoint", "final-weights"])
def test_full_disk_while_saving_leaves_nothing_half_written(tiny_base, tiny_image, tmp_path, monkeypatch,
                                                           failing_call):
    calls, real_save = [], runfolder.save_file

    def fills_the_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) < failing_call:
            return real_save(tensors, filename, metadata=metadata)
        open(filename, "wb").write(b"half")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(runfolder, "save_file", fills_the_disk)
    config = tiny_config(tiny_base, **{"train.steps": 4, "train.checkpoint_every": 2})
    out = tmp_path / "run"
    with pytest.raises(UnZipLoRAError, match="disk is full.*nothing half-written"):
        decompose(tiny_image, out, config, progress=False)
    assert not out.exists() and not list(tmp_path.rglob(".*tmp*"))
    if failing_call == 1:
        assert list(tmp_path.iterdir()) == []  # no checkpoint to keep: OUT.partial is gone too
    else:
        assert record_step(out) == 2  # the complete checkpoint of step 2 stays, ready for --resume


@pytest.mark.parametrize("edit, message", [
    ({"tensors": "../../elsewhere.safetensors"}, "invalid tensors file"),
    ({"format": CHECKPOINT_FORMAT - 1}, "written by an older unziplora"),
    ({"format": CHECKPOINT_FORMAT + 1}, "written by a newer unziplora"),
], ids=["path-for-tensors", "older-format", "newer-format"])
def test_checkpoint_record_that_cannot_be_trusted_is_refused(cli_args, tmp_path, capsys, monkeypatch, edit, message):
    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", _nan_at(3))
    assert main(cli_args(out)) == 2
    monkeypatch.undo()
    record_path = runfolder.partial_dir(out) / CHECKPOINT_DIR / RECORD_FILE
    record = json.loads(record_path.read_text())
    record.update(edit)
    record_path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(cli_args(out, "--resume")) == 2
    assert message in capsys.readouterr().err
