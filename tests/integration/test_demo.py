"""The demo command's wiring, on the tiny pipeline standing in for the embedded model."""

import pytest

import unziplora.app.demo as demo
from unziplora.app.cli import main
from unziplora.errors import UnZipLoRAError


def test_demo_writes_run_and_grid(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "EMBEDDED_MODEL", tiny_base)
    monkeypatch.setitem(demo.DEMO_OVERRIDES, "train.resolution", 32)
    monkeypatch.setitem(demo.DEMO_OVERRIDES, "sample.steps", 2)
    path = demo.run_demo(tmp_path / "demo", steps=3, progress=False)
    assert (path / "demo.png").is_file() and (path / "content_lora").is_dir()
    subject, style, _ = demo.demo_image()
    from unziplora.run.folder import RunFolder

    prompts = RunFolder.open(path).manifest.prompts
    assert (prompts.subject, prompts.style_words) == (subject.cls, style.family)


def test_missing_embedded_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "EMBEDDED_MODEL", tmp_path / "nowhere")
    with pytest.raises(UnZipLoRAError, match="embedded base model is missing"):
        demo.run_demo(tmp_path / "out")
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    assert "python -m recipes.toyworld_model" in capsys.readouterr().err


def test_a_second_demo_writes_beside_the_first_and_keeps_what_the_user_added(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "EMBEDDED_MODEL", tiny_base)
    monkeypatch.setitem(demo.DEMO_OVERRIDES, "train.resolution", 32)
    monkeypatch.setitem(demo.DEMO_OVERRIDES, "sample.steps", 2)
    first = demo.run_demo(tmp_path / "demo", steps=2, progress=False)
    (first / "samples" / "mine").mkdir(parents=True)
    (first / "samples" / "mine" / "keep.png").write_bytes(b"user's file")
    second = demo.run_demo(tmp_path / "demo", steps=2, progress=False)
    assert second == tmp_path / "demo-2" and (second / "demo.png").is_file()
    assert (first / "samples" / "mine" / "keep.png").read_bytes() == b"user's file"
    assert demo.run_demo(tmp_path / "demo", steps=2, progress=False, force=True) == tmp_path / "demo"
    assert not (first / "samples" / "mine").exists()  # --force replaces, as asked
