"""kohya/webui export and LoRA imports, checked through diffusers' own loading paths."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open

from unziplora.names import Branch
from unziplora.errors import UnZipLoRAError
from unziplora.export import export_run
from unziplora.run.loras import load_lora_any
from unziplora.run.modelcard import write_model_card
from unziplora.run.folder import LORA_WEIGHT_NAME, load_safetensors, save_safetensors


def images(pipe, lora_path, name):
    pipe.load_lora_weights(str(lora_path), adapter_name=name)
    out = pipe("A monadikos cat", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    pipe.delete_adapters(name)
    return out


def test_kohya_export_loads_in_diffusers_and_matches(tiny_base, tiny_run, tmp_path):
    files = export_run(tiny_run.path, "kohya", tmp_path / "kohya")
    assert [f.name for f in files] == ["cat_content.safetensors", "cat_style.safetensors"]
    with safe_open(str(files[0]), "pt") as fh:
        keys = list(fh.keys())
        assert all(k.startswith("lora_unet_") for k in keys)
        assert any(k.endswith(".alpha") for k in keys)
        assert fh.metadata()["ss_network_dim"] == "4"
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    pipe.set_progress_bar_config(disable=True)
    reference = images(pipe, tiny_run.lora_dir(Branch.CONTENT), "diffusers")
    kohya = images(pipe, files[0], "kohya")
    assert np.allclose(reference, kohya, atol=1e-5)


def test_diffusers_export_holds_the_same_tensors_and_metadata(tiny_run, tmp_path):
    """Read and written again, never copied unseen (a damaged or linked file is refused instead)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = export_run(tiny_run.path, "diffusers", tmp_path / "d")
    source = tiny_run.lora_dir(Branch.STYLE) / LORA_WEIGHT_NAME
    a, b = load_file(str(files[1])), load_file(str(source))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(files[1]), "pt") as x, safe_open(str(source), "pt") as y:
        assert x.metadata() == y.metadata()
    with pytest.raises(UnZipLoRAError, match="unknown export format"):
        export_run(tiny_run.path, "ckpt")


def test_imports_agree_across_formats(tiny_run, tmp_path):
    diffusers_dir = tiny_run.lora_dir(Branch.CONTENT)
    reference = load_lora_any(diffusers_dir)
    assert reference and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in reference)
    kohya = load_lora_any(export_run(tiny_run.path, "kohya", tmp_path / "k")[0])
    b_lora_file = tmp_path / "b_lora.safetensors"
    raw = load_safetensors(diffusers_dir / LORA_WEIGHT_NAME)
    save_safetensors({k.replace("unet.", "unet.unet.", 1): v for k, v in raw.items()}, b_lora_file)
    b_lora = load_lora_any(b_lora_file)
    for other in (kohya, b_lora):
        assert other.keys() == reference.keys()
        for key in reference:
            assert torch.allclose(other[key], reference[key], atol=1e-6), key


def test_import_errors(tmp_path):
    with pytest.raises(UnZipLoRAError, match="no LoRA file"):
        load_lora_any(tmp_path)
    (tmp_path / "x.bin").write_bytes(b"\0" * 10)
    with pytest.raises(UnZipLoRAError, match="never loads pickled"):
        load_lora_any(tmp_path / "x.bin")


def test_model_card(tiny_run, tmp_path):
    from PIL import Image

    from unziplora.methods import plugin

    card = write_model_card(tmp_path, tiny_run.manifest, Image.open(tiny_run.path / "input.png"), "cat",
                            plugin(tiny_run.manifest.method).card)
    text = card.read_text()
    assert "monadikos cat" in text and "<lora:cat_content:1>" in text and "load_lora_weights" in text
    assert "with **unziplora**" in text and "merger vectors left out (M (.) B A)" in text  # which export
    assert (tmp_path / "thumbnail.png").is_file()


def test_kohya_alpha_is_folded_into_b(tiny_run, tmp_path):
    path = export_run(tiny_run.path, "kohya", tmp_path / "k")[0]
    state = load_safetensors(path)
    halved = {k: (v * 0 + 2.0 if k.endswith(".alpha") else v) for k, v in state.items()}  # alpha 2, rank 4
    save_safetensors(halved, tmp_path / "half.safetensors")
    full, half = load_lora_any(path), load_lora_any(tmp_path / "half.safetensors")
    for key in full:
        factor = 0.5 if key.endswith(".lora_B.weight") else 1.0
        assert torch.allclose(half[key], full[key] * factor, atol=1e-6), key


def test_generate_from_plain_lora_files(tiny_base, tiny_run, tmp_path):
    """Cross generation with a run's content and a B-LoRA-style file as style; style alone from kohya."""
    from unziplora.config import SampleConfig
    from unziplora.generate import generate

    raw = load_safetensors(tiny_run.lora_dir(Branch.STYLE) / LORA_WEIGHT_NAME)
    b_lora = tmp_path / "b_lora_style.safetensors"
    # B-LoRA publishes only some blocks, with a doubled prefix
    save_safetensors({k.replace("unet.", "unet.unet.", 1): v for k, v in raw.items() if "up_blocks.0" in k}, b_lora)
    sample = SampleConfig(steps=2, seeds=[0])
    paths = generate("A <c> cat in <s> style", tmp_path / "mix", "cross", content_run=tiny_run.path,
                     style_run=b_lora, sample=sample, style_words="ink")
    assert len(paths) == 1
    with pytest.raises(UnZipLoRAError, match="--style-words"):
        generate("A <c> cat in <s> style", tmp_path / "mix2", "cross", content_run=tiny_run.path,
                 style_run=b_lora, sample=sample)
    kohya = export_run(tiny_run.path, "kohya", tmp_path / "k")[1]
    with pytest.raises(UnZipLoRAError, match="--base-model"):
        generate("A truck in ink style", tmp_path / "s", "style", run=kohya, sample=sample)
    assert generate("A truck in ink style", tmp_path / "s", "style", run=kohya, sample=sample,
                    base_model=str(tiny_base))


def test_cli_export(tiny_run, tmp_path, capsys):
    from unziplora.app.cli import main

    assert main(["export", str(tiny_run.path), "--format", "kohya", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "cat_content.safetensors").is_file()
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_refuses_a_link_out_of_the_run_and_a_damaged_lora(tiny_run, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run.path, tmp_path / "run")
    target = run / "content_lora" / LORA_WEIGHT_NAME
    target.unlink()
    target.symlink_to("/etc/passwd")
    with pytest.raises(UnZipLoRAError, match="leads out of the run folder"):
        export_run(run, "diffusers", tmp_path / "out")
    target.unlink()
    target.write_bytes((tiny_run.lora_dir(Branch.CONTENT) / LORA_WEIGHT_NAME).read_bytes()[:500])  # truncated
    with pytest.raises(UnZipLoRAError, match="corrupt"):
        export_run(run, "diffusers", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written
