"""--out never destroys an input, and --force replaces only a previous output of the same command."""

import json
import shutil
import threading

import pytest

from unziplora.app.cli import main
from unziplora.run.folder import _temp_for


def tree(folder):
    """Every file under `folder` with its size: what must survive a refused command."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def parent(tiny_run, tmp_path):
    """A folder holding two copies of the tiny run (a user's runs/ folder)."""
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(tiny_run.path, runs / name)
    return runs


def refused(argv, capsys, *words):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:"), err
    for word in words:
        assert word in err, err
    return err


def test_no_command_writes_over_or_around_its_input(parent, tmp_path, capsys):
    run, before = parent / "a", tree(parent)
    cases = [
        (["export", run, "--out", parent, "--force"], "holds the input"),
        (["export", run, "--out", run, "--force"], "is the input"),
        (["export", run, "--out", run / "content_lora", "--force"], "inside the input"),
        (["generate", run, "--prompt", "a <c>", "--out", run, "--force"], "is the input"),
        (["generate", run, "--prompt", "a <c>", "--out", parent, "--force"], "holds the input"),
        (["generate", "--content", run, "--style", parent / "b", "--prompt", "a <c>", "--out", parent / "b",
          "--force"], "is the input"),
        (["merge", run, run, "--out", run, "--force"], "is the input"),
        (["merge", run / "content_lora", parent / "b", "--out", run / "style_lora", "--force"], "inside the run"),
        (["decompose", run / "input.png", "--subject", "cat", "--style", "sketch", "--out", run, "--force"],
         "holds the input"),
    ]
    for argv, words in cases:
        refused(argv, capsys, words)
        assert tree(parent) == before, argv


def test_force_replaces_only_a_previous_output_of_the_same_command(parent, tmp_path, capsys):
    run = parent / "a"
    out = tmp_path / "kohya"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert main(["export", str(run), "--out", str(out), "--force"]) == 0  # its own previous output: replaced
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(parent / "b", elsewhere / "b")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    shutil.copy(run / "input.png", tmp_path / "x.png")  # a real image: the output check is what refuses
    before = tree(tmp_path)
    refused(["export", run, "--out", elsewhere / "b", "--force"], capsys, "is a run folder")
    refused(["merge", run, run, "--out", out, "--force"], capsys, "does not write")  # export's, not merge's
    refused(["generate", run, "--prompt", "a <c>", "--out", tmp_path / "notes", "--force"], capsys, "todo.txt")
    refused(["decompose", tmp_path / "x.png", "--subject", "c", "--style", "s", "--out", tmp_path / "notes",
             "--force"], capsys, "not a run folder")
    assert tree(tmp_path) == before


def test_eval_json_never_overwrites_another_file_and_is_checked_before_scoring(parent, tmp_path, capsys):
    run = parent / "a"
    images = tmp_path / "gen"
    images.mkdir()
    shutil.copy(run / "input.png", images / "seed0_0.png")
    manifest = (run / "manifest.json").read_text()
    base = ["eval", images, "--reference", run / "input.png", "--clip", tmp_path / "no-model"]
    refused(base + ["--json", run / "manifest.json"], capsys, "not a scores file")
    assert (run / "manifest.json").read_text() == manifest
    refused(base + ["--json", run / "input.png"], capsys, "is the input")
    refused(base + ["--json", tmp_path], capsys, "is a folder")
    refused(base + ["--json", tmp_path / "missing" / "s.json"], capsys, "does not exist")
    refused(base + ["--metrics", ","], capsys, "no metric")
    previous = tmp_path / "scores.json"
    previous.write_text(json.dumps({"images": 1, "scores": {}}))
    err = refused(base + ["--json", previous], capsys)  # a previous scores file may be replaced: the model is next
    assert "scores file" not in err and "no-model" in err


def test_temp_names_differ_between_threads_of_one_process(tmp_path):
    names = set()

    def name():
        names.add(_temp_for(tmp_path / "manifest.json").name)

    threads = [threading.Thread(target=name) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    name()
    name()
    assert len(names) == 10
