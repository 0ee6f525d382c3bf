"""What a new user trips over in the first hour, kept fixed (one test per behaviour that can regress)."""

import re
import shlex
import shutil

import pytest

from unziplora.models.base import BaseModel
import unziplora.generate as generation
from unziplora.app.cli import build_parser, main
from unziplora.errors import UnZipLoRAError
from unziplora.generate import generate


@pytest.fixture()
def run(tiny_run, tmp_path):
    """A private copy of the tiny run: generating into it must not touch the shared one."""
    return shutil.copytree(tiny_run.path, tmp_path / "cat")


def subcommand_help(name: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices)
    return action.choices[name].format_help()


def test_generate_help_states_the_defaults_it_uses():
    text = " ".join(subcommand_help("generate").split())
    for flag in ("--seeds", "--steps", "--guidance", "--resolution"):
        assert re.search(re.escape(flag) + r".*?default: the run's", text), flag
    assert "0 1000 111 1234" not in text and "default 50" not in text


def test_every_argument_of_every_command_is_described():
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions if not a.help]
    assert not bare, bare
    assert "a run folder (the --out of decompose" in " ".join(subcommand_help("info").split())
    assert "the run folder whose content and style LoRAs" in " ".join(subcommand_help("export").split())


def test_an_existing_output_is_refused_before_the_model_loads(run, monkeypatch):
    (run / "samples" / "mine").mkdir(parents=True)
    (run / "samples" / "mine" / "a.png").write_bytes(b"x")
    import unziplora.models.loading

    monkeypatch.setattr(unziplora.models.loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(UnZipLoRAError, match="already exists"):
        generate("A <c> cat", run / "samples" / "mine", "content", run=run)


def test_each_call_writes_a_new_folder(run):
    first = generate("A <c> cat", None, "content", run=run, steps=1, seeds=[0])
    second = generate("A <c> cat on a boat", None, "content", run=run, steps=1, seeds=[0])
    assert first[0].parent == run / "samples" / "content-001"
    assert second[0].parent == run / "samples" / "content-002"


def test_both_without_tags_says_that_the_branches_see_one_prompt(run, capsys):
    generate("A cat on a boat", None, "both", run=run, steps=1, seeds=[0])
    assert "the prompt has no <c> or <s>" in capsys.readouterr().out


def test_the_model_card_works_as_written_from_another_directory(tmp_path, monkeypatch):
    """On the embedded model (fp16 weights: the card's diffusers code must load it on a CPU)."""
    from unziplora.decompose import decompose
    from unziplora.methods import resolve_config
    from unziplora.models.embedded import EMBEDDED_MODEL, demo_image

    subject, style, image = demo_image()
    config = resolve_config({"model.base_model": str(EMBEDDED_MODEL), "prompts.subject": subject.cls,
                             "prompts.style": style.family, "train.steps": 2, "sample.steps": 2,
                             "sample.seeds": [0]}).config
    folder = tmp_path / "runs" / "tri"
    decompose(image, folder, config, progress=False)
    card = (folder / "README.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert blocks
    for code in blocks:
        scope = {}
        exec(code.replace("num_inference_steps=2", "num_inference_steps=1"), scope)
        assert scope["image"].size == (64, 64)
    commands = [line.strip() for line in card.splitlines() if line.strip().startswith("unziplora ")]
    assert commands and all(str(folder) in c for c in commands)
    generate_line = next(c for c in commands if c.startswith("unziplora generate"))
    assert main(shlex.split(generate_line)[1:] + ["--steps", "1", "--quiet"]) == 0


def test_articles_and_words_the_model_never_learned(tiny_base, capsys):
    from unziplora.config import PromptConfig
    from unziplora.decompose import _print_prompt_notes
    from unziplora.models.base import BaseModel
    from unziplora.core.prompts import training_prompts

    prompts = training_prompts(PromptConfig(subject="astronaut", style="plasma"))
    assert prompts.style == "An astronaut in plasma style" and prompts.combined.startswith("A monadikos")
    _print_prompt_notes(BaseModel.resolve(tiny_base).load(), prompts)  # the tiny model's words: cat, sketch, ...
    out = capsys.readouterr().out
    assert "never learned the word(s) astronaut, plasma" in out and "sketch" in out


def test_generate_warns_about_words_the_model_never_learned(run, capsys):
    generate("A <c> cat on a surfboard near lighthouses", None, "content", run=run, steps=1, seeds=[0])
    out = capsys.readouterr().out  # the tiny model's words: cat, beach, sketch, ... (tests/pipelines.py)
    assert "never learned the word(s) lighthouses, near, surfboard" in out and "sketch" in out  # and what it knows
    generate("A <c> cat in <s> style", None, "both", run=run, steps=1, seeds=[0])
    assert "never learned" not in capsys.readouterr().out


@pytest.mark.parametrize("key, value, match", [
    ("prompts.combined", "A {identifier.__class__}", "use only {identifier}, {subject}, {style}"),
    ("prompts.content", "A {identifier", "not a valid template"),
    ("prompts.identifier", "my cat", "must be one word"),
])
def test_bad_prompt_settings_are_one_clear_error(key, value, match):
    from unziplora.config import RunConfig
    from unziplora.core.prompts import training_prompts

    with pytest.raises(UnZipLoRAError, match=match):
        training_prompts(RunConfig().with_overrides({"prompts.subject": "cat", "prompts.style": "ink", key: value}).prompts)


def test_preview_shows_the_trained_crop_with_whole_labels(tiny_run):
    from PIL import Image

    preview = Image.open(tiny_run.path / "preview.png")
    assert preview.width == 4 * 128  # 32 px tiles shown at 128 px so "content alone" fits under one
    from unziplora.core.data import centre_crop

    crop = centre_crop(Image.open(tiny_run.path / "input.png"), 32)  # the 40x52 input: not squashed
    import numpy as np

    shown = np.asarray(preview.convert("RGB").crop((0, 0, 128, 128)).resize((32, 32), Image.Resampling.NEAREST))
    assert np.abs(shown.astype(int) - np.asarray(crop).astype(int)).mean() < 8


def test_files_respect_the_umask_and_export_refuses_to_overwrite(tiny_run, tmp_path):
    import os
    import stat

    from unziplora.export import export_run
    from unziplora.methods.merge import merge

    old = os.umask(0o022)
    try:
        files = export_run(tiny_run.path, "kohya", tmp_path / "k")
        merged = merge(tiny_run.path, tiny_run.path, tmp_path / "m")
    finally:
        os.umask(old)
    for path in [*files, merged, merged / "pytorch_lora_weights.safetensors", tmp_path / "k"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    with pytest.raises(UnZipLoRAError, match="already exists"):
        export_run(tiny_run.path, "kohya", tmp_path / "k")
    assert export_run(tiny_run.path, "kohya", tmp_path / "k", force=True) == files


def test_kohya_metadata_describes_the_real_base_model_and_rank(tiny_run, tmp_path):
    from safetensors import safe_open

    from unziplora.export import export_run

    path = export_run(tiny_run.path, "kohya", tmp_path / "k")[0]
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        dim = next(fh.get_tensor(k).shape[0] for k in fh.keys() if k.endswith("lora_down.weight"))
    assert meta["ss_base_model_version"] != "sdxl_base_v1-0"  # a tiny test model, not SDXL base 1.0
    assert meta["ss_sd_model_name"] == tiny_run.manifest.base_model
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == str(dim)


def test_info_shows_where_the_settings_came_from(tmp_path, tiny_base, tiny_image, capsys):
    image = tmp_path / "in.png"
    tiny_image.save(image)
    (tiny_base / "unziplora_defaults.yaml").write_text("lora: {rank: 2}\n")
    try:
        assert main(["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(tmp_path / "r"),
                     "--base-model", str(tiny_base), "--steps", "2", "--resolution", "32", "--sample-steps", "1",
                     "--quiet"]) == 0
    finally:
        (tiny_base / "unziplora_defaults.yaml").unlink()
    out = capsys.readouterr().out
    assert "lora.rank=2 (model)" in out and "train.steps=2 (given)" in out


def test_input_png_is_what_the_readme_says(tiny_run, tiny_image):
    from pathlib import Path

    from PIL import Image

    assert Image.open(tiny_run.path / "input.png").size == tiny_image.size  # 52x40, trained at 32 px
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `input.png`"))
    assert "original size" in row and "as trained on" not in row
