"""Decompose on a tiny SDXL pipeline loaded from disk, then use the outputs like a user would."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from unziplora.names import Branch
from unziplora.app.cli import main
from unziplora.config import SampleConfig
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.generate import generate
from unziplora.run.folder import RunFolder

from ..conftest import tiny_config


def test_run_folder_has_every_promised_file(tiny_run):
    path = tiny_run.path
    for name in ("content_lora/pytorch_lora_weights.safetensors", "style_lora/pytorch_lora_weights.safetensors",
                 "unziplora.safetensors", "manifest.json", "config.yaml", "input.png", "preview.png",
                 "loss.csv", "loss.png", "README.md", "thumbnail.png"):
        assert (path / name).is_file(), name
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["prompts"]["combined"] == "A monadikos cat in sketch style"
    assert manifest["steps"] == 5 and manifest["seed"] == 0
    assert set(manifest["versions"]) >= {"torch", "diffusers", "peft", "unziplora"}
    assert manifest["timings"]["train_s"] > 0
    assert len((path / "loss.csv").read_text().strip().splitlines()) == 1 + 5
    assert not list(path.parent.glob(".*partial*")), "temporary folder left behind"


def test_masks_after_three_refreshes(tiny_run):
    """Each masked branch holds 3 x k columns (k = 10 %); where both are masked their masks may
    overlap (content may take style's columns), and the mergers learn there. (Was: masks kept
    disjoint, at most 30 %.)"""
    state = load_file(str(tiny_run.state_path))
    masked_both = [k[: -len(".content.mask")] for k in state if k.endswith(".content.mask")
                   and k.startswith(("down_blocks", "mid_block"))]
    assert masked_both
    overlaps = 0
    for name in masked_both:
        content, style = state[f"{name}.content.mask"].bool(), state[f"{name}.style.mask"].bool()
        k = int(content.numel() * 0.1)
        assert int(content.sum()) == int(style.sum()) == 3 * k, name
        overlaps += int((content & style).sum())
    assert overlaps > 0
    # content trains all columns of up_blocks.0.attentions.0 (SDXL profile): its saved mask is all ones
    key = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.content.mask"
    assert state[key].bool().all()
    for key, merger in state.items():
        if key.endswith(".merger"):
            assert merger.min() >= 0 and merger.max() <= 1


def test_training_is_deterministic_on_cpu(tiny_base, tiny_image, tiny_run, tmp_path):
    again = decompose(tiny_image, tmp_path / "again", tiny_config(tiny_base), progress=False)
    first, second = load_file(str(tiny_run.state_path)), load_file(str(again.state_path))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_content_lora_loads_in_stock_pipeline_and_changes_output(tiny_base, tiny_run):
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="A monadikos cat", num_inference_steps=2, height=32, width=32, output_type="np")
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(tiny_run.lora_dir(Branch.CONTENT)), adapter_name="content")
    with_lora = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(plain - with_lora).max() > 1e-3


def test_stock_lora_equals_our_content_branch(tiny_base, tiny_run):
    """The exported content LoRA computes exactly what the content branch alone computes (M (.) B A)."""
    from unziplora.core.inject import inject_two_branch_lora
    from unziplora.models.profiles import INFERENCE_PROFILE

    ours = StableDiffusionXLPipeline.from_pretrained(str(tiny_base)).unet
    holder = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    holder.load_lora_weights(str(tiny_run.lora_dir(Branch.CONTENT)), adapter_name="content")
    stock = holder.unet
    lora = inject_two_branch_lora(ours, INFERENCE_PROFILE, rank=4)
    lora.load_branch(tiny_run.load_state(), Branch.CONTENT)
    lora.set_active({Branch.CONTENT})
    g = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(1, 4, 16, 16, generator=g), timestep=torch.tensor([300]),
                  encoder_hidden_states=torch.randn(1, 77, 64, generator=g),
                  added_cond_kwargs={"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])})
    with torch.no_grad():
        assert torch.allclose(stock(**inputs).sample, ours(**inputs).sample, atol=1e-5)


@pytest.mark.parametrize("mode", ["content", "style", "both"])
def test_generate_modes(tiny_run, tmp_path, mode):
    sample = SampleConfig(steps=2, seeds=[0, 7])
    paths = generate("A <c> cat in <s> style in a boat", tmp_path / mode, mode, run=tiny_run.path, sample=sample)
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    record = json.loads((tmp_path / mode / "generation.json").read_text())
    assert (tmp_path / mode / "grid.png").is_file()
    if mode == "both":
        assert record["prompts"] == {"combined": "A monadikos cat in sketch style in a boat",
                                     "content": "A monadikos cat in a boat", "style": "A cat in sketch style in a boat"}


def test_generate_cross_run(tiny_base, tiny_image, tiny_run, tmp_path):
    other = decompose(tiny_image.rotate(90), tmp_path / "lantern",
                      tiny_config(tiny_base, **{"prompts.subject": "lantern", "prompts.style": "neon"}), progress=False)
    sample = SampleConfig(steps=2, seeds=[0])
    paths = generate("A <c> cat in <s> style", tmp_path / "mix", "cross", content_run=tiny_run.path,
                     style_run=other.path, sample=sample)
    record = json.loads((tmp_path / "mix" / "generation.json").read_text())
    assert record["prompts"]["combined"] == "A monadikos cat in neon style"
    assert len(paths) == 1
    both = generate("A <c> cat in <s> style", tmp_path / "both", "both", run=tiny_run.path, sample=sample)
    from PIL import Image

    assert not np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(both[0])))


def test_existing_run_folder_is_not_overwritten(tiny_base, tiny_image, tiny_run):
    before = (tiny_run.path / "manifest.json").read_text()
    with pytest.raises(UnZipLoRAError, match="--force"):
        decompose(tiny_image, tiny_run.path, tiny_config(tiny_base), progress=False)
    assert (tiny_run.path / "manifest.json").read_text() == before


def test_cli_decompose_info_generate(tiny_base, tiny_image, tmp_path, capsys):
    image = tmp_path / "in.png"
    tiny_image.save(image)
    out = tmp_path / "run"
    code = main(["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(out),
                 "--base-model", str(tiny_base), "--steps", "3", "--rank", "2", "--resolution", "32",
                 "--sample-steps", "2", "--quiet"])
    assert code == 0
    assert main(["info", str(out)]) == 0
    assert "monadikos" in capsys.readouterr().out
    assert main(["generate", str(out), "--mode", "both", "--prompt", "A <c> cat in <s> style",
                 "--steps", "2", "--seeds", "3"]) == 0
    assert (out / "samples" / "both-001" / "seed3_0.png").is_file()  # a new folder per call


@pytest.mark.parametrize(
    "argv, message",
    [
        (["decompose", "missing.png", "--subject", "cat", "--style", "x", "--out", "o"], "does not exist"),
        (["decompose", "IMG", "--subject", "", "--style", "x", "--out", "o"], "subject word is empty"),
        (["decompose", "IMG", "--subject", "cat", "--style", "x", "--out", "o", "--rank", "0"], "lora.rank"),
        (["decompose", "IMG", "--subject", "cat", "--style", "x", "--out", "o", "--base-model", "./nowhere"], "does not exist"),
        (["decompose", "IMG", "--subject", "cat", "--style", "x", "--out", "o", "--base-model", "acme/no-such-sdxl"], "--base-model ./sdxl"),
        (["info", "nowhere"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tiny_image, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_image.save(tmp_path / "IMG", format="PNG")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_run_from_another_base_model_is_refused(tiny_run, tmp_path):
    from tests.pipelines import TinySDXLSpec, save_tiny_sdxl_pipeline

    wider = save_tiny_sdxl_pipeline(tmp_path / "wider", TinySDXLSpec(block_out_channels=(16, 32, 128)))
    with pytest.raises(UnZipLoRAError, match="shape"):
        generate("A <c> cat in <s> style", tmp_path / "x", "both", run=tiny_run.path,
                 sample=SampleConfig(steps=1, seeds=[0]), base_model=str(wider))


def test_newer_run_format_is_refused(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnZipLoRAError, match="upgrade unziplora"):
        RunFolder.open(copy)


@pytest.mark.parametrize("mode", ["both", "content"])
def test_fused_generation_matches_unfused(tiny_run, tmp_path, mode):
    from PIL import Image

    sample = SampleConfig(steps=3, seeds=[0, 5])
    fast = generate("A <c> cat in <s> style", tmp_path / "fast", mode, run=tiny_run.path, sample=sample, num_images=2)
    slow = generate("A <c> cat in <s> style", tmp_path / "slow", mode, run=tiny_run.path, sample=sample, num_images=2,
                    fused=False)
    for a, b in zip(fast, slow):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 2, (a.name, diff.max())  # PNG rounding of allclose float images
