"""benchmarks/gpu_pretrain.py --export: an arm's weights become a whole model folder, at the arm's UNet widths."""

import json
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unziplora.demo import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")
export_arm = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "gpu_pretrain.py"))["export_arm"]


def test_a_wider_arm_exports_a_model_that_loads_at_its_widths(tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from unziplora.models import load_pipeline
    from unziplora.toyworld.model_files import CHECKSUM_FILE, RECIPE_FILE

    base = StableDiffusionXLPipeline.from_pretrained(str(EMBEDDED_MODEL))
    wide = UNet2DConditionModel.from_config({**base.unet.config, "block_out_channels": [48, 96, 192]})
    weights = {f"unet.{n}": t.half().contiguous() for n, t in wide.state_dict().items()}
    for key in ("text_encoder", "text_encoder_2"):
        weights |= {f"{key}.{n}": t.half().contiguous() for n, t in getattr(base, key).state_dict().items()}
    save_file(weights, str(tmp_path / "wide.safetensors"), metadata={"unet_block_out_channels": "[48, 96, 192]"})

    out = export_arm(tmp_path / "wide.safetensors", {"arm": "wide"}, EMBEDDED_MODEL, tmp_path / "model")
    pipe = load_pipeline(str(out))
    assert list(pipe.unet.config.block_out_channels) == [48, 96, 192]
    probe = "down_blocks.1.attentions.0.proj_in.weight"
    assert torch.equal(pipe.unet.state_dict()[probe], wide.state_dict()[probe].half().float())
    assert json.loads((out / RECIPE_FILE).read_text())["fine_tune"] == {"arm": "wide"}
    assert "unet/diffusion_pytorch_model.safetensors" in (out / CHECKSUM_FILE).read_text()
    assert not (tmp_path / "model.partial").exists()
