"""A VAE file (train_base_model.py --export-vae) read back at its shape, and the renders row that
benchmarks/base_model_quality.py --vae judges it against."""

import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unziplora.demo import EMBEDDED_MODEL
from unziplora.errors import UnZipLoRAError
from unziplora.toyworld.model_files import read_vae_file

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")
bench = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "base_model_quality.py"))


def embedded_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(EMBEDDED_MODEL), subfolder="vae")


def write_vae(vae, path, latent_channels, widths):
    tensors = {f"vae.{n}": t.half().contiguous() for n, t in vae.state_dict().items()}
    save_file(tensors, str(path), metadata={"scaling_factor": repr(vae.config.scaling_factor),
                                            "latent_channels": str(latent_channels), "vae_block_out_channels": widths})
    return path


def test_a_vae_file_loads_at_the_shape_its_metadata_names(tmp_path):
    vae = embedded_vae()
    loaded = read_vae_file(str(write_vae(vae, tmp_path / "vae.safetensors", 8, "[32, 64, 64]")))
    assert loaded.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    assert all(torch.equal(loaded.state_dict()[n], t.half().float()) for n, t in vae.state_dict().items())


def test_a_file_of_no_known_vae_shape_is_one_clear_error(tmp_path):
    path = write_vae(embedded_vae(), tmp_path / "odd.safetensors", 3, "[16]")
    with pytest.raises(UnZipLoRAError, match="no VAE of a known shape .*--export-vae"):
        read_vae_file(str(path))


def test_a_file_that_is_no_safetensors_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(UnZipLoRAError, match="cannot read .*notes.txt as a safetensors VAE file"):
        read_vae_file(str(tmp_path / "notes.txt"))


def test_the_renders_row_judges_the_same_draws_as_the_vae_row():
    renders = bench["judge_renders"](16, seed=0)
    assert renders["images"] == 16
    assert renders["class_acc"] == 1.0  # the content oracle names the class of every clean render
    samples, arrays = bench["pretraining_renders"](16, seed=0)
    again, _ = bench["pretraining_renders"](16, seed=0)
    assert [s.style.family for s in samples] == [s.style.family for s in again]
    assert sum(renders["family_judged_as"][f].get(f, 0) for f in renders["family_judged_as"]) == round(16 * renders["family_acc"])
