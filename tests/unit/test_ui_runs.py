"""The page's runs folder: run names never escape it, the list shows the runs, kept requests."""

import json

import pytest

from unziplora.errors import UnZipLoRAError
from unziplora.app.ui.runs import PENDING_DIR, RunsFolder

ESCAPES = ["../escape", "..", ".", "a/b", "a\\b", "/tmp/escape", "~/escape", ".hidden", "x.partial", "x..y",
           "", " ", "-dash-first", "a" * 81, "run\x00name", "naïve", "a/../b"]


@pytest.mark.parametrize("name", ESCAPES)
def test_unsafe_run_names_are_refused(tmp_path, name):
    runs = RunsFolder(tmp_path / "runs")
    with pytest.raises(UnZipLoRAError, match="not allowed"):
        runs.path(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_plain_names_stay_inside(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    for name in ("cat-watercolor", "Cat_2", "v1.0", "a" * 80):
        assert runs.path(name).parent == runs.root


def test_a_link_out_of_the_runs_folder_is_refused(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (runs.root / "sneaky").symlink_to(outside)
    with pytest.raises(UnZipLoRAError, match="leads out of the runs folder"):
        runs.path("sneaky")
    assert runs.runs() == []  # not listed either


def test_free_name_skips_runs_partials_and_pending(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    assert runs.free_name("cat", "water color!") == "cat-water-color"
    (runs.root / "cat-sketch").mkdir()
    (runs.root / "cat-sketch-2.partial").mkdir()
    (runs.root / PENDING_DIR / "cat-sketch-3").mkdir(parents=True)
    assert runs.free_name("cat", "sketch") == "cat-sketch-4"
    assert runs.free_name("../..", "//") == "run"


def test_runs_list_and_reopen(tiny_run, tmp_path):
    runs = RunsFolder(tiny_run.path.parent)
    (runs.root / "broken").mkdir()
    (runs.root / "broken" / "manifest.json").write_text("{not json")
    listed = runs.runs()
    assert [r.name for r in listed] == [tiny_run.path.name]
    info = listed[0]
    assert (info.subject, info.style, info.method, info.steps) == ("cat", "sketch", "unziplora", 5)
    assert info.thumbnail is not None and info.thumbnail.is_file()
    assert info.created == tiny_run.manifest.created
    assert info.caption.startswith(f"{tiny_run.path.name}: cat / sketch · unziplora · ")
    assert runs.open(tiny_run.path.name).manifest == tiny_run.manifest


def test_kept_request_round_trips_and_is_forgotten(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    upload = tmp_path / "Upload.PNG"
    upload.write_bytes(b"image bytes")
    image = runs.keep_request("cat-sketch", upload, {"subject": "cat", "style": "sketch"})
    assert image.read_bytes() == b"image bytes" and image.name == "input.png"
    kept_image, request = runs.request("cat-sketch")
    assert kept_image == image and request["subject"] == "cat"
    assert runs.interrupted() == []  # no checkpoint: nothing to resume
    runs.forget("cat-sketch")
    assert not runs.pending("cat-sketch").exists()
    with pytest.raises(UnZipLoRAError, match="kept no settings"):
        runs.request("cat-sketch")


def test_a_kept_request_cannot_point_outside(tmp_path):
    runs = RunsFolder(tmp_path / "runs")
    folder = runs.pending("cat")
    folder.mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (folder / "request.json").write_text(json.dumps({"image": "../../../secret.png"}))
    image, _ = runs.request("cat")
    assert image.parent == folder  # only the file name of what the json says is used
