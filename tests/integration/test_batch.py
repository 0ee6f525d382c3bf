"""`unziplora batch` on the tiny pipeline: rows split among processes, kills, failures, shards, scores.

On a CPU, `accelerate launch --cpu --num_processes 2` starts several processes only through
mpirun (accelerate 1.x); without it, it runs one process over every row. These tests launch
through torchrun instead (`accelerate launch --multi_gpu --num_processes 2` on a machine with no
GPU), where each process sees its rank and `Processes` picks the CPU back end, as
`accelerate launch --cpu` with mpirun would.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from unziplora.app.batch import batch_status, read_jobs
from unziplora.app.batch.state import Layout, read_events, running_holder
from unziplora.app.cli import main
from unziplora.run.lock import WorkLock

from ..conftest import SLOW_CLI
from ..unit.test_metrics import model_dirs  # noqa: F401  (the tiny CLIP, DINO and CSD folders)

OUTPUTS = ("manifest.json", "unziplora.safetensors", "content_lora/pytorch_lora_weights.safetensors",
           "style_lora/pytorch_lora_weights.safetensors", "preview.png", "input.png")



def make_jobs(folder, rows, bad=(), extra_columns=None):
    """A CSV of `rows` toy-world images (r0, r1, ...); the rows in `bad` get a file that is no image."""
    from unziplora.toyworld import heldout_images

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,image,subject,style" + "".join(f",{c}" for c in (extra_columns or {}))]
    for i, (subject, style, image) in enumerate(heldout_images(rows, 64)):
        path = folder / f"r{i}.png"
        if i in bad:
            path.write_text("not an image")
        else:
            image.save(path)
        cells = "".join(f",{values.get(i, '')}" for values in (extra_columns or {}).values())
        lines.append(f"r{i},r{i}.png,{subject.cls},{style.family}{cells}")
    (folder / "run.yaml").write_text("masks: {refresh_every: 2}\ntrain: {checkpoint_every: 1}\n"
                                     "sample: {steps: 1, seeds: [0]}\n")
    jobs = folder / "jobs.csv"
    jobs.write_text("\n".join(lines) + "\n")
    return jobs


def batch_args(jobs, out, base, *extra, steps=3, quiet=True):
    return ["batch", str(jobs), "--out", str(out), "--base-model", str(base), "--steps", str(steps),
            "--resolution", "32", "--rank", "4", "--config", str(jobs.parent / "run.yaml"),
            *(["--quiet"] if quiet else []), *extra]


def starts(out):
    return [(e["row"], e["process"]) for e in read_events(Layout(out)) if e["event"] == "start"]


def done_events(out):
    return sorted(e["row"] for e in read_events(Layout(out)) if e["event"] == "done")


def assert_complete(out, ids):
    for row in ids:
        for name in OUTPUTS:
            assert (out / row / name).is_file(), f"{row}/{name}"
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial-*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate(*args):
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()), *args]


def test_a_bad_row_is_recorded_while_the_others_finish(tiny_base, tmp_path, capsys):
    jobs = make_jobs(tmp_path / "in", 4, bad={2}, extra_columns={"steps": {1: 2}, "method": {3: "unziplora-m1"}})
    out = tmp_path / "runs"
    assert main(batch_args(jobs, out, tiny_base)) == 1  # a row failed
    assert_complete(out, ["r0", "r1", "r3"])
    assert not (out / "r2").exists()
    failure = json.loads((out / ".batch" / "rows" / "r2" / "failed.json").read_text())
    assert "r2.png" in failure["error"] and "\n" not in failure["error"] and failure["stage"] == "decompose"
    manifests = {r: json.loads((out / r / "manifest.json").read_text()) for r in ("r0", "r1", "r3")}
    assert [manifests[r]["steps"] for r in ("r0", "r1", "r3")] == [3, 2, 3]  # a row's column overrides --steps
    assert manifests["r3"]["method"] == "unziplora-m1" and manifests["r0"]["method"] == "unziplora"
    printed = capsys.readouterr().out
    assert "4 rows: 3 done, 0 running, 1 failed, 0 pending" in printed and "r2: failed: " in printed
    page = (out / "index.html").read_text()
    assert all(f">r{i}<" in page for i in range(4)) and "r0/preview.png" in page and "not a readable image" in page

    assert main(batch_args(jobs, out, tiny_base)) == 1  # the same command again: nothing is redone
    assert len(starts(out)) == 4
    (jobs.parent / "r2.png").unlink()
    (jobs.parent / "r0.png").rename(jobs.parent / "r2.png")
    assert main(batch_args(jobs, out, tiny_base, "--retry-failed")) == 0  # only the failed row reruns
    assert [row for row, _ in starts(out)] == ["r0", "r1", "r2", "r3", "r2"]
    assert_complete(out, ["r2"])
    assert not (out / ".batch" / "rows" / "r2" / "failed.json").exists()
    capsys.readouterr()
    assert main(["batch", str(jobs), "--out", str(out), "--status"]) == 0
    assert "4 rows: 4 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out


def test_accelerate_two_processes_split_the_rows(tiny_base, tmp_path):
    """Six rows over two processes: each process runs every other row, none runs twice, and a
    failing row (r1, process 1's first) stops neither process; the exit status says it failed."""
    jobs = make_jobs(tmp_path / "in", 6, bad={1})
    out = tmp_path / "runs"
    result = subprocess.run(accelerate("-m", "unziplora", *batch_args(jobs, out, tiny_base)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(starts(out)) == [(f"r{i}", f"process {i % 2} of 2") for i in range(6)], result.stderr[-3000:]
    assert done_events(out) == ["r0", "r2", "r3", "r4", "r5"]
    assert_complete(out, ["r0", "r2", "r3", "r4", "r5"])
    assert result.stdout.count("6 rows: 5 done, 0 running, 1 failed, 0 pending") == 1  # the main process's summary
    assert "process 0 of 2: 3 of 6 rows" in result.stdout and "process 1 of 2: 3 of 6 rows" in result.stdout


def test_a_process_killed_mid_run_is_completed_by_the_relaunch(tiny_base, tmp_path):
    """Kill one of two processes in the middle of a row (SIGKILL: no clean-up): the launcher stops the
    other; the same command (here in one process) resumes the killed rows from their checkpoints,
    runs the rest, and writes each run exactly once."""
    jobs = make_jobs(tmp_path / "in", 4)
    out = tmp_path / "runs"
    script = tmp_path / "slow_batch.py"
    script.write_text(SLOW_CLI)
    env = {**os.environ, "UNZIPLORA_TEST_SLEEP": "0.5"}
    launcher = subprocess.Popen(accelerate(str(script), *batch_args(jobs, out, tiny_base, steps=8)), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    layout = Layout(out)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.2)
            for partial in out.glob("*.partial") if out.is_dir() else []:
                record = partial / "checkpoint" / "state.json"
                lock = out / ".batch" / "rows" / partial.name[: -len(".partial")] / ".lock"
                try:
                    if json.loads(record.read_text())["step"] >= 2 and (out / "r0" / "manifest.json").is_file():
                        victim = (partial.name[: -len(".partial")], json.loads(lock.read_text())["pid"])
                except (OSError, ValueError, KeyError):
                    continue
        assert victim is not None, "no row reached a checkpoint: " + (launcher.stderr.read()[-2000:] if launcher.poll()
                                                                     is not None else "")
        os.kill(victim[1], signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    table = read_jobs(jobs)
    assert all(running_holder(layout, job) is None for job in table)  # no process of that launch lives on
    before = {s.job.id: s for s in batch_status(jobs, out, write_html=False)}
    assert before[victim[0]].status.value == "pending" and "resumes after step" in before[victim[0]].detail

    assert main(batch_args(jobs, out, tiny_base, steps=8)) == 0
    assert_complete(out, [f"r{i}" for i in range(4)])
    assert done_events(out) == [f"r{i}" for i in range(4)]  # every run written exactly once
    resumed = [e for e in read_events(layout) if e["event"] == "start" and e["row"] == victim[0]][-1]
    assert resumed["resume"] and resumed["from_step"] >= 2
    assert json.loads((out / victim[0] / "manifest.json").read_text())["steps"] == 8


def test_shards_run_only_their_rows_and_together_all(tiny_base, tmp_path, capsys):
    jobs = make_jobs(tmp_path / "in", 3)
    out = tmp_path / "runs"
    assert main(batch_args(jobs, out, tiny_base, "--shard", "1/2")) == 0
    assert [row for row, _ in starts(out)] == ["r1"]
    assert "whole batch (3 rows, every shard): 3 rows: 1 done, 0 running, 0 failed, 2 pending" in capsys.readouterr().out
    assert main(batch_args(jobs, out, tiny_base, "--shard", "0/2", quiet=False)) == 0
    assert sorted(row for row, _ in starts(out)) == ["r0", "r1", "r2"]
    assert_complete(out, ["r0", "r1", "r2"])
    assert "batch 0/1: 100%" in capsys.readouterr().err  # the process's bar over its rows


def test_out_of_memory_and_a_nan_loss_end_only_their_rows(tiny_base, tmp_path, monkeypatch):
    import torch

    from unziplora import decompose as module
    from unziplora.core.train import NonFiniteLoss

    real = module.decompose

    def failing(image, out_dir, *args, **kwargs):
        name = os.path.basename(out_dir)
        if name == "r0":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)\nmore")
        if name == "r1":
            raise NonFiniteLoss(2, float("nan"))
        return real(image, out_dir, *args, **kwargs)

    monkeypatch.setattr(module, "decompose", failing)
    jobs = make_jobs(tmp_path / "in", 3)
    out = tmp_path / "runs"
    assert main(batch_args(jobs, out, tiny_base)) == 1
    errors = {r: json.loads((out / ".batch" / "rows" / r / "failed.json").read_text())["error"] for r in ("r0", "r1")}
    assert errors["r0"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"
    assert errors["r1"].startswith("the loss became nan at step 2")
    assert_complete(out, ["r2"])


def test_a_row_another_process_holds_is_left_to_it(tiny_base, tmp_path, capsys):
    jobs = make_jobs(tmp_path / "in", 2)
    out = tmp_path / "runs"
    layout = Layout(out)
    held = read_jobs(jobs)[0]
    layout.row_dir(held).mkdir(parents=True)
    lock = WorkLock(layout.row_dir(held))
    lock.acquire()
    try:
        assert main(batch_args(jobs, out, tiny_base)) == 0
        assert [row for row, _ in starts(out)] == ["r1"]
        assert re.search(rf"r0\s+running\s+-\s+pid {os.getpid()} on ", capsys.readouterr().out)
    finally:
        lock.release()
    assert main(batch_args(jobs, out, tiny_base)) == 0
    assert_complete(out, ["r0", "r1"])


def test_eval_scores_toy_world_rows_once(tiny_base, tmp_path, capsys):
    jobs = make_jobs(tmp_path / "in", 2)
    out = tmp_path / "runs"
    assert main(batch_args(jobs, out, tiny_base, "--eval")) == 0
    metrics = ("subject_alignment", "style_alignment", "style_leakage", "subject_leakage", "combined")
    for row in ("r0", "r1"):
        record = json.loads((out / row / "eval" / "scores.json").read_text())
        assert record["kind"] == "toyworld" and set(record["scores"]) == set(metrics)
        assert all(0.0 <= v <= 1.0 for v in record["scores"].values())
    printed = capsys.readouterr().out
    assert all(f"{m}: " in printed for m in metrics) and "± " in printed
    assert "subject_alignment" in (out / "index.html").read_text()
    evaluated = [e for e in read_events(Layout(out)) if e["event"] == "evaluated"]
    assert main(batch_args(jobs, out, tiny_base, "--eval")) == 0  # scored already: nothing is generated again
    assert [e for e in read_events(Layout(out)) if e["event"] == "evaluated"] == evaluated


def test_eval_of_other_images_needs_the_papers_metric_models(tiny_base, tmp_path, capsys):
    jobs = make_jobs(tmp_path / "in", 1)
    jobs.write_text("id,image,subject,style\nr0,r0.png,cat,watercolor\n")
    out = tmp_path / "runs"
    assert main(batch_args(jobs, out, tiny_base, "--eval")) == 2
    assert "row r0 is not a toy-world image" in capsys.readouterr().err and not out.exists()


def test_eval_with_the_papers_metrics(tiny_base, tmp_path, model_dirs):
    jobs = make_jobs(tmp_path / "in", 1)
    jobs.write_text("id,image,subject,style\nr0,r0.png,cat,sketch\n")
    out = tmp_path / "runs"
    folders = [arg for name in ("dino", "csd", "clip") for arg in (f"--{name}", str(model_dirs / name))]
    assert main(batch_args(jobs, out, tiny_base, "--eval", *folders)) == 0
    record = json.loads((out / "r0" / "eval" / "scores.json").read_text())
    assert record["kind"] == "paper"
    assert set(record["scores"]) == {"subject_dino", "subject_clip_i", "subject_csd", "style_csd", "style_clip_i",
                                     "text_clip_t"}
    assert all(-1.0 <= v <= 1.0 for v in record["scores"].values())

