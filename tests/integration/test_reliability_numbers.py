"""Broken numbers are never silent: non-finite or absurd LoRA weights, odd alphas, integer tensors,
non-finite images and merges."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from unziplora.app.cli import main
from unziplora.errors import UnZipLoRAError
from unziplora.export import export_run
from unziplora.names import Branch
from unziplora.run.folder import LORA_WEIGHT_NAME


def content_lora(tiny_run):
    return load_file(str(tiny_run.lora_dir(Branch.CONTENT) / LORA_WEIGHT_NAME))


def one_line_error(argv, capsys):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "Inf"), (-3e5, "beyond")])
def test_broken_lora_weights_are_refused_naming_the_tensor(tiny_base, tiny_run, tmp_path, capsys, value, word):
    state = content_lora(tiny_run)
    key = sorted(k for k in state if k.endswith("lora_B.weight"))[3]
    state[key] = state[key].clone()
    state[key][0, 0] = value
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    gen = ["generate", broken, "--mode", "content", "--base-model", tiny_base, "--prompt", "a cat",
           "--out", tmp_path / "g", "--steps", "1", "--resolution", "32", "--seeds", "0"]
    for argv in (gen, ["merge", broken, tiny_run.path, "--out", tmp_path / "m"]):
        err = one_line_error(argv, capsys)
        assert word in err and key in err, err
    assert not (tmp_path / "g").exists() and not (tmp_path / "m").exists()


def test_alphas_must_be_one_finite_number(tiny_run, tmp_path, capsys):
    kohya = export_run(tiny_run.path, "kohya", tmp_path / "k")[0]
    state = load_file(str(kohya))
    alpha = sorted(k for k in state if k.endswith(".alpha"))[0]
    for value, word in ((torch.tensor(math.nan), "NaN"), (torch.tensor([4.0, 4.0]), "one number")):
        save_file({**state, alpha: value}, str(tmp_path / "bad.safetensors"))
        err = one_line_error(["merge", tmp_path / "bad.safetensors", tiny_run.path, "--out", tmp_path / "m"], capsys)
        assert word in err and alpha in err, err


def test_integer_lora_tensors_load_with_a_warning(tiny_run, tmp_path, capsys):
    state = content_lora(tiny_run)
    key = sorted(k for k in state if k.endswith("lora_A.weight"))[0]
    state[key] = torch.zeros_like(state[key], dtype=torch.int8)
    save_file(state, str(tmp_path / "ints.safetensors"))
    assert main(["merge", str(tmp_path / "ints.safetensors"), str(tiny_run.path), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and key in err and "int8" in err


def test_a_non_finite_merge_result_is_never_written(tiny_run, tmp_path, monkeypatch, capsys):
    from unziplora.methods import merge

    real = merge.direct_merge

    def diverged(content, style):  # what a diverged ZipLoRA optimisation hands back
        out = real(content, style)
        key = next(iter(out))
        out[key] = out[key] * math.nan
        return out

    monkeypatch.setattr(merge, "direct_merge", diverged)
    err = one_line_error(["merge", tiny_run.path, tiny_run.path, "--out", tmp_path / "m"], capsys)
    assert "NaN" in err and "merge" in err
    assert not (tmp_path / "m").exists()


def test_generate_writes_no_image_that_is_not_finite(tiny_run, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from unziplora.generate import generate

    forward = UNet2DConditionModel.forward

    def nan_forward(self, *args, **kwargs):  # a model whose numbers broke in fp16
        out = forward(self, *args, **kwargs)
        return (out[0] * math.nan, *out[1:]) if isinstance(out, tuple) else type(out)(sample=out.sample * math.nan)

    monkeypatch.setattr(UNet2DConditionModel, "forward", nan_forward)
    with pytest.raises(UnZipLoRAError, match="seed 0 holds NaN"):
        generate("a <c>", tmp_path / "g", "content", run=tiny_run.path, steps=1, seeds=[0])
    assert not (tmp_path / "g").exists()


def test_a_seed_given_twice_is_refused(tiny_run, tmp_path, capsys):
    err = one_line_error(["generate", tiny_run.path, "--prompt", "a <c>", "--seeds", "0", "0",
                          "--out", tmp_path / "g"], capsys)
    assert "seed 0 more than once" in err
