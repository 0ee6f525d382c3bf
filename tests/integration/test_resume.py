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
from PIL import Image
from safetensors.torch import load_file, save_file

from unziplora.run import folder as runfolder
from unziplora.run.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FORMAT, RECORD_FILE
from unziplora.app.cli import main
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.core.train import Trainer

from ..conftest import SLOW_CLI, tiny_config

OUTPUTS = ("unziplora.safetensors", "content_lora/pytorch_lora_weights.safetensors",
           "style_lora/pytorch_lora_weights.safetensors")



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


def argv_in(folder, tiny_base, tiny_image):
    """argv for an 8-step run with refreshes at steps 0, 3, 6 and a checkpoint every 2 steps, its
    image and config written into `folder`."""
    image = folder / "in.png"
    tiny_image.save(image)
    config = folder / "run.yaml"
    config.write_text("masks: {refresh_every: 3}\ntrain: {checkpoint_every: 2}\nsample: {steps: 2, seeds: [0]}\n")

    def argv(out, *extra):
        return ["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(out),
                "--base-model", str(tiny_base), "--steps", "8", "--rank", "4", "--resolution", "32",
                "--config", str(config), "--quiet", *extra]

    return argv


@pytest.fixture
def cli_args(tiny_base, tiny_image, tmp_path):
    return argv_in(tmp_path, tiny_base, tiny_image)


def run_child(argv, sleep=0.0, **kwargs):
    # One thread each: two children share this machine, and every child must run the same kernels
    # (same thread count) for the bitwise comparison to hold.
    env = {**os.environ, "UNZIPLORA_TEST_SLEEP": str(sleep), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, *argv], env=env, stdout=subprocess.PIPE,
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


NO_SPACE = "Error while serializing: I/O error: No space left on device (os error 28)"


def fill_the_disk(monkeypatch):
    """Every writer meets a full disk after writing a little: safetensors' (ours and diffusers'), as its
    Rust writer reports it (SafetensorError, not OSError), and PIL's."""
    import safetensors.torch
    from PIL import Image as PILImage
    from safetensors import SafetensorError

    def full_safetensors(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise SafetensorError(NO_SPACE)

    real_save = PILImage.Image.save

    def full_png(self, fp, *args, **kwargs):
        if not isinstance(fp, (str, os.PathLike)):  # into memory (a hash of the input): no disk involved
            return real_save(self, fp, *args, **kwargs)
        open(fp, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(runfolder, "save_file", full_safetensors)
    monkeypatch.setattr(safetensors.torch, "save_file", full_safetensors)
    monkeypatch.setattr(PILImage.Image, "save", full_png)


def hidden_leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.startswith(".") or ".partial" in p.name or ".tmp" in p.name]


@pytest.mark.parametrize("command", ["decompose", "decompose-b-lora", "merge", "export-kohya-default", "export-diffusers",
                                     "generate"])
def test_a_full_disk_is_one_line_on_every_writer(command, cli_args, tiny_run, tmp_path, capsys, monkeypatch):
    """One line, no traceback, nothing half-written, and no folder left that the command created."""
    run = shutil.copytree(tiny_run.path, tmp_path / "cat")
    out = tmp_path / "new" / "out"
    argv = {
        "decompose": cli_args(out, "--steps", "2"),
        "decompose-b-lora": cli_args(out, "--steps", "2", "--method", "b-lora"),
        "merge": ["merge", str(run), str(run), "--out", str(out)],
        "export-kohya-default": ["export", str(run), "--format", "kohya"],
        "export-diffusers": ["export", str(run), "--format", "diffusers", "--out", str(out)],
        "generate": ["generate", str(run), "--prompt", "A <c> cat", "--steps", "1", "--seeds", "0", "--out", str(out),
                     "--quiet"],
    }[command]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    fill_the_disk(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # after decompose's training warnings, if any
    assert last.startswith("error: the disk is full while writing") and "nothing half-written" in last
    assert err.count("error:") == 1 and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no temp file, no empty folder


CRASH = """
import os, signal, sys
import safetensors.torch
from PIL import Image
import unziplora.run.folder as runfolder

real_save = Image.Image.save

def dies_half_way(*args, **kwargs):
    target = kwargs.get("filename") or args[1]
    if not isinstance(target, (str, os.PathLike)):
        return real_save(*args, **kwargs)
    open(target, "wb").write(b"half" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)

runfolder.save_file = safetensors.torch.save_file = Image.Image.save = dies_half_way
from unziplora.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["export", "merge", "generate"])
def test_leftovers_of_a_killed_command_are_removed_by_its_next_run(command, tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.path, tmp_path / "cat")
    argv = {
        "export": ["export", str(run), "--format", "kohya", "--out", str(tmp_path / "k")],
        "merge": ["merge", str(run), str(run), "--out", str(tmp_path / "m")],
        "generate": ["generate", str(run), "--prompt", "A <c> cat", "--steps", "1", "--seeds", "0", "--quiet"],
    }[command]
    killed = subprocess.run([sys.executable, "-c", CRASH, *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert hidden_leftovers(tmp_path)  # what a kill leaves: a hidden work folder, a half-written temp file
    assert main(argv) == 0
    assert hidden_leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def checkpointed(tiny_base, tiny_image, tmp_path_factory):
    """OUT.partial with the checkpoint of step 2 (the loss turned NaN at step 3), made once."""
    folder = tmp_path_factory.mktemp("checkpointed")
    step = Trainer.train_step
    Trainer.train_step = _nan_at(3)
    try:
        assert main(argv_in(folder, tiny_base, tiny_image)(folder / "run")) == 2
    finally:
        Trainer.train_step = step
    return runfolder.partial_dir(folder / "run")


def _tensors(edit):
    """An edit of the checkpoint's tensors file (the record is left as it is)."""
    def apply(record, tensors):
        edit(tensors)
    return apply


def _first(tensors, suffix, dims=None):
    return next(k for k in sorted(tensors) if k.endswith(suffix) and (dims is None or tensors[k].dim() == dims))


@pytest.mark.parametrize("edit, message", [
    ({"tensors": "../../elsewhere.safetensors"}, "invalid tensors file"),
    ({"format": CHECKPOINT_FORMAT - 1}, "written by an older unziplora"),
    ({"format": CHECKPOINT_FORMAT + 1}, "written by a newer unziplora"),
    ({"history": "x"}, "'history' must list one entry per step"),
    ({"history": [{"bogus": 1}, {"bogus": 2}]}, "'history' holds"),
    ({"rng": "x"}, "'rng' must hold the python and numpy random states"),
    ({"rng": {"python": [3, [1, 2], None], "numpy": ["MT19937", 0, 0, 0.0]}}, "'rng.python' is not a Python random"),
    ({"optimizer": "x"}, "'optimizer' must map parameter indices"),
    ({"optimizer": {"x": 5}}, "'optimizer' must map parameter indices"),
    ({"optimizer": {"99999": {}}}, "optimiser state for parameter 99999 does not fit"),
    ({"refresh_pending": "yes"}, "'refresh_pending' must be true or false"),
    (_tensors(lambda t: [t.pop(k) for k in list(t) if k.startswith("rng.")]), "lacks rng.torch and 2 more"),
    (_tensors(lambda t: t.update({"rng.torch": torch.zeros(7, dtype=torch.uint8)})), "rng.torch has shape [7]"),
    (_tensors(lambda t: t.update({_first(t, "exp_avg"): torch.zeros(3)})), "has shape [3], its parameter needs"),
    (_tensors(lambda t: t.update({(k := _first(t, "exp_avg_sq", 3)): t[k].transpose(1, 2).contiguous()})),
     "its parameter needs"),
    (_tensors(lambda t: t.pop(_first(t, "exp_avg"))), "does not fit this model"),
    (_tensors(lambda t: t.update({"lora.nothing.content.lora_A": torch.zeros(2, 2)})), "is not in this model's state"),
], ids=["path-for-tensors", "older-format", "newer-format", "history-string", "history-items", "rng-string",
        "rng-python", "optimizer-string", "optimizer-keys", "optimizer-index", "refresh-pending", "rng-tensors-missing",
        "rng-tensor-shape", "moment-shape", "moment-transposed", "moment-missing", "unknown-tensor"])
def test_checkpoint_record_that_cannot_be_trusted_is_refused(cli_args, checkpointed, tmp_path, capsys, edit, message):
    """One line naming the field, and the checkpoint is kept (a refusal deletes nothing)."""
    out = tmp_path / "run"
    partial = shutil.copytree(checkpointed, runfolder.partial_dir(out))
    record_path = partial / CHECKPOINT_DIR / RECORD_FILE
    record = json.loads(record_path.read_text())
    if callable(edit):
        tensors_path = partial / CHECKPOINT_DIR / record["tensors"]
        tensors = load_file(str(tensors_path))
        edit(record, tensors)
        save_file(tensors, str(tensors_path))
    else:
        record.update(edit)
        record_path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(cli_args(out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert record_path.is_file() and not out.exists()

# ----- one live writer per folder (runlock.py, outputs.py) -----------------------------------------
HOLD_LOCK = """
import sys, time
from pathlib import Path
from unziplora.run.lock import WorkLock
WorkLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_lock(folder):
    folder.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_lock_names_a_live_holder_and_is_taken_over_when_it_dies(tmp_path):
    from unziplora.run.lock import RunInProgress, WorkLock

    folder = tmp_path / "work"
    child = hold_lock(folder)
    try:
        holder = WorkLock(folder).holder()
        assert holder is not None and holder.pid == child.pid
        with pytest.raises(RunInProgress, match=f"pid {child.pid} on"):
            WorkLock(folder).acquire()
    finally:
        child.kill()
        child.wait()
    assert (folder / ".lock").exists() and WorkLock(folder).holder() is None  # stale: its process is gone
    lock = WorkLock(folder)
    lock.acquire()  # taken over
    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / ".lock").exists()


def test_a_live_run_is_never_removed_or_mixed(cli_args, tmp_path, capsys):
    """Two processes on one --out: the second is refused, with --force too, and says the run is live."""
    out = tmp_path / "F"
    first = run_child(cli_args(out, "--steps", "6"), sleep=0.4)
    deadline = time.monotonic() + 300
    while (record_step(out) or 0) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    dog = tmp_path / "dog.png"
    Image.open(tmp_path / "in.png").rotate(90).save(dog)
    second = [str(dog) if a.endswith("in.png") else a for a in map(str, cli_args(out))]
    second[second.index("cat")] = "dog"
    for extra in (["--force"], [], ["--resume"]):
        assert main(second + extra) == 2
        err = capsys.readouterr().err.strip()
        assert f"is being written by a run in progress (pid {first.pid} on" in err and "\n" not in err
        assert "interrupted" not in err and "--force never removes a live run" in err
    assert first.wait() == 0, first.communicate()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompts"]["subject"] == "cat"
    from unziplora.decompose import _image_sha256

    assert _image_sha256(Image.open(out / "input.png")) == manifest["input"]["sha256"]  # the first run's image
    assert not runfolder.partial_dir(out).exists() and not (out / ".lock").exists()


def test_leftovers_beside_an_output_are_removed_only_when_their_writer_is_dead(tmp_path):
    from unziplora.run.outputs import UNLOCKED_GRACE_S, clean_leftovers

    out = tmp_path / "k"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = hold_lock(tmp_path / ".k.partial-live")
    try:
        stale = tmp_path / ".k.partial-stale"
        stale.mkdir()
        (stale / ".lock").write_text(json.dumps({"pid": dead_pid, "host": "h"}))
        (stale / ".k_content.safetensors.tmp-1").write_bytes(b"x" * 1000)
        other = tmp_path / ".samples-001.partial-x"  # another output's, written by a dead process
        other.mkdir()
        (other / ".lock").write_text("{}")
        fresh, old = tmp_path / ".k.partial-fresh", tmp_path / ".k.partial-old"  # no lock: an older unziplora's
        fresh.mkdir(), old.mkdir()
        os.utime(old, (time.time() - 2 * UNLOCKED_GRACE_S,) * 2)
        swapped = tmp_path / f".k.old-{dead_pid}"
        swapped.mkdir()
        removed = clean_leftovers(out)
        assert sorted(p.name for p in removed) == sorted([stale.name, other.name, old.name, swapped.name])
        assert sorted(p.name for p in tmp_path.iterdir()) == [".k.partial-fresh", ".k.partial-live"]
    finally:
        live.kill()
        live.wait()


def test_resume_cleans_temp_files_of_a_killed_writer_first(tmp_path):
    from unziplora.run.outputs import resumable_output_dir

    work = tmp_path / "run.partial"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / ".tensors-000006.safetensors.tmp-99999").write_bytes(b"x" * 4096)
    (work / "checkpoint" / "state.json").write_text("{}")
    with resumable_output_dir(tmp_path / "run", force=False, resume=True, keep=lambda w: True) as folder:
        assert sorted(p.name for p in folder.rglob("*")) == [".lock", "checkpoint", "state.json"]
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoint", "state.json"]


# ----- --resume never deletes ---------------------------------------------------------------
def test_resume_never_deletes_and_finishes_a_run_whose_outputs_are_complete(cli_args, tmp_path, capsys):
    done = tmp_path / "done"
    assert main(cli_args(done)) == 0
    capsys.readouterr()
    # Killed while removing its checkpoint: every output is in OUT.partial, the checkpoint gone.
    out = tmp_path / "run"
    shutil.copytree(done, runfolder.partial_dir(out))
    assert main(cli_args(out, "--resume")) == 0
    assert "already holds every output" in capsys.readouterr().out
    assert_same_outputs(done, out)
    assert not runfolder.partial_dir(out).exists()

    # Outputs but no manifest and no checkpoint, or a state.json that cannot be read: refused, kept.
    for name, damage in (("no-checkpoint", None), ("unreadable", b"\xff\x00 not json")):
        out = tmp_path / name
        partial = shutil.copytree(done, runfolder.partial_dir(out), ignore=shutil.ignore_patterns("manifest.json"))
        if damage:
            (partial / CHECKPOINT_DIR).mkdir()
            (partial / CHECKPOINT_DIR / RECORD_FILE).write_bytes(damage)
        before = sorted(p.relative_to(partial) for p in partial.rglob("*"))
        assert main(cli_args(out, "--resume")) == 2
        err = capsys.readouterr().err.strip()
        assert ("nothing to resume" if damage is None else "is damaged") in err and "\n" not in err
        assert sorted(p.relative_to(partial) for p in partial.rglob("*")) == before  # nothing deleted

    # A finished run of another image is refused, not taken for this one.
    other = tmp_path / "other"
    shutil.copytree(done, runfolder.partial_dir(other))
    manifest = runfolder.partial_dir(other) / "manifest.json"
    manifest.write_text(manifest.read_text().replace(json.loads(manifest.read_text())["input"]["sha256"], "0" * 64))
    assert main(cli_args(other, "--resume")) == 2
    assert "holds a finished run made with another image" in capsys.readouterr().err
    assert runfolder.partial_dir(other).exists()
