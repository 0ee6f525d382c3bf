"""Bad models, damaged run folders and over-long prompts, on the tiny pipeline."""

import shutil

from unziplora.cli import main
from unziplora.config import SampleConfig
from unziplora.generate import generate

LONG = "A <c> cat in <s> style " + " ".join(f"with a tiny detail number {i}" for i in range(20))


def test_long_prompt_prints_what_is_cut(tiny_run, tmp_path, capsys):
    generate(LONG, tmp_path / "long", "content", run=tiny_run.path, sample=SampleConfig(steps=1, seeds=[0]))
    out = capsys.readouterr().out
    assert "note: prompt is" in out and "tokens, CLIP reads 77: only" in out


def test_corrupt_state_file_in_a_run_folder(tiny_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.path, copy)
    (copy / "unziplora.safetensors").write_bytes(b"\x00" * 100)
    assert main(["generate", str(copy), "--prompt", "A <c> cat", "--steps", "1", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "\n" not in err.strip()


def test_cli_refuses_a_folder_that_is_not_sdxl(tiny_base, tiny_image, tmp_path, capsys):
    fake = tmp_path / "sd15"
    shutil.copytree(tiny_base, fake)
    index = (fake / "model_index.json").read_text().replace("StableDiffusionXLPipeline", "StableDiffusionPipeline")
    (fake / "model_index.json").write_text(index)
    tiny_image.save(tmp_path / "in.png")
    argv = ["decompose", str(tmp_path / "in.png"), "--subject", "cat", "--style", "x", "--out", str(tmp_path / "o"),
            "--base-model", str(fake), "--steps", "1", "--resolution", "32", "--quiet"]
    assert main(argv) == 2
    assert "not an SDXL-shaped" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "sd15"]  # no OUT, no OUT.partial


def test_sources_never_unpickle_or_run_remote_code():
    from pathlib import Path

    import unziplora

    for path in Path(unziplora.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for forbidden in ("trust_remote_code=True", "torch.load(", "pickle.load", "custom_pipeline="):
            assert forbidden not in text, f"{path.name}: {forbidden}"

