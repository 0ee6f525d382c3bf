"""Direct merge: one ordinary LoRA equal to content + style applied together."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from unziplora.names import Branch
from unziplora.app.cli import main
from unziplora.errors import UnZipLoRAError
from unziplora.export import export_run
from unziplora.methods.merge import direct_merge, merge

from ..conftest import adapters_and_merged


def test_direct_merge_is_the_exact_sum():
    torch.manual_seed(0)
    c = {"m.lora_A.weight": torch.randn(2, 5), "m.lora_B.weight": torch.randn(4, 2)}
    s = {"m.lora_A.weight": torch.randn(3, 5), "m.lora_B.weight": torch.randn(4, 3),
         "n.lora_A.weight": torch.randn(1, 2), "n.lora_B.weight": torch.randn(2, 1)}
    merged = direct_merge(c, s)
    expected = c["m.lora_B.weight"] @ c["m.lora_A.weight"] + s["m.lora_B.weight"] @ s["m.lora_A.weight"]
    assert torch.allclose(merged["m.lora_B.weight"] @ merged["m.lora_A.weight"], expected, atol=1e-6)
    assert merged["n.lora_A.weight"].shape == (1, 2)  # a module only one side has is kept as is
    bad = {"m.lora_A.weight": torch.randn(2, 6), "m.lora_B.weight": torch.randn(4, 2)}
    try:
        direct_merge(c, bad)
    except UnZipLoRAError as exc:
        assert "different base models" in str(exc)
    else:
        raise AssertionError("shape mismatch not detected")


def test_merged_lora_equals_two_adapters_in_stock_diffusers(tiny_base, tiny_run, tmp_path):
    kohya_style = export_run(tiny_run.path, "kohya", tmp_path / "k")[1]  # imports from kohya too
    out = merge(tiny_run.path, kohya_style, tmp_path / "merged")
    both, merged = adapters_and_merged(StableDiffusionXLPipeline.from_pretrained(str(tiny_base)), tiny_run, out)
    assert np.allclose(both, merged, atol=1e-4)


def test_cli_merge(tiny_run, tmp_path, capsys):
    assert main(["merge", str(tiny_run.path), str(tiny_run.path), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "pytorch_lora_weights.safetensors").is_file()
    with pytest.raises(UnZipLoRAError, match="unknown merge method .svd.; use one of direct, ziplora"):
        merge(tiny_run.path, tiny_run.path, tmp_path / "z", method="svd")


def test_ziplora_learns_mergers_and_writes_an_ordinary_lora(tiny_base, tiny_run, tmp_path):
    from unziplora.run.folder import load_safetensors

    direct = load_safetensors(merge(tiny_run.path, tiny_run.path, tmp_path / "d") / "pytorch_lora_weights.safetensors")
    zipped_dir = merge(tiny_run.path, tiny_run.path, tmp_path / "zip", method="ziplora", steps=4, device="cpu")
    zipped = load_safetensors(zipped_dir / "pytorch_lora_weights.safetensors")
    assert zipped.keys() == direct.keys()
    # Mergers per INPUT feature (mkshing/ziplora-pytorch): they scale A's columns; B is untouched.
    # (Was: per output feature, folded into B.)
    assert all(torch.equal(zipped[k], direct[k]) for k in zipped if "lora_B" in k)
    assert any(not torch.allclose(zipped[k], direct[k]) for k in zipped if "lora_A" in k)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    pipe.load_lora_weights(str(zipped_dir), adapter_name="zip")
    with pytest.raises(UnZipLoRAError, match="--base-model"):
        from unziplora.export import export_run

        kohya = export_run(tiny_run.path, "kohya", tmp_path / "k")
        merge(kohya[0], kohya[1], tmp_path / "z2", method="ziplora", steps=1)


def test_ziplora_layer_and_loss_follow_the_reference():
    from torch import nn

    from unziplora.methods.ziplora import ZipLoraLinear, merged_lora

    torch.manual_seed(0)
    base = nn.Linear(5, 4)
    lora_c = (torch.randn(2, 5), torch.randn(4, 2))
    lora_s = (torch.randn(3, 5), torch.randn(4, 3))
    layer = ZipLoraLinear(base, lora_c, lora_s)
    assert layer.mergers.shape == (2, 5)  # one coefficient per input feature, per LoRA
    with torch.no_grad():
        layer.mergers.uniform_(0, 2)
    x = torch.randn(3, 5)
    w_c, w_s = lora_c[1] @ lora_c[0], lora_s[1] @ lora_s[0]
    merged_weight = w_c * layer.mergers[0] + w_s * layer.mergers[1]  # the reference's get_ziplora_weight
    assert torch.allclose(layer(x), base(x) + x @ merged_weight.T, atol=1e-5)
    layer.alone = Branch.STYLE
    assert torch.allclose(layer(x), base(x) + x @ w_s.T, atol=1e-5)  # one LoRA alone, no merger
    assert torch.allclose(layer.merger_overlap(), (layer.mergers[0] * layer.mergers[1]).abs().mean())
    state = merged_lora({"m": layer})
    assert torch.allclose(state["m.lora_B.weight"] @ state["m.lora_A.weight"], merged_weight, atol=1e-5)
