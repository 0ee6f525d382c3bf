"""What a new user trips over in the first hour, kept fixed (one test per behaviour that can regress)."""

import re
import shlex
import shutil

import pytest

import unziplora.generate as generation
from unziplora.cli import build_parser, main
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


def test_an_existing_output_is_refused_before_the_model_loads(run, monkeypatch):
    (run / "samples" / "mine").mkdir(parents=True)
    (run / "samples" / "mine" / "a.png").write_bytes(b"x")
    monkeypatch.setattr(generation, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model first"))
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
    from unziplora.defaults import resolve_config
    from unziplora.demo import EMBEDDED_MODEL, demo_image

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
