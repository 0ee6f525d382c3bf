"""--quantize-base: the frozen denoiser loaded quantized by bitsandbytes (QLoRA), where CUDA and
bitsandbytes exist; refused in one line before anything loads or is written where they do not."""

import pytest
import torch
from torch import nn

from unziplora.errors import UnZipLoRAError
from unziplora.models.base import BaseModel
from unziplora.models.families import SDXL, family_named
from unziplora.models.loading import check_quantization, load_pipeline, quantization_for, to_device

from ..conftest import tiny_config


def test_each_choice_quantizes_the_familys_denoiser_only():
    flux = family_named("FluxPipeline")
    nf4 = quantization_for(flux, "nf4")
    assert nf4.components_to_quantize == ["transformer"] and nf4.quant_backend == "bitsandbytes_4bit"
    assert nf4.quant_kwargs["load_in_4bit"] and nf4.quant_kwargs["bnb_4bit_quant_type"] == "nf4"
    assert nf4.quant_kwargs["bnb_4bit_compute_dtype"] == torch.bfloat16  # FLUX computes in bf16, SDXL in fp16
    assert quantization_for(SDXL, "nf4").quant_kwargs["bnb_4bit_compute_dtype"] == torch.float16
    int8 = quantization_for(SDXL, "int8")
    assert int8.components_to_quantize == ["unet"] and int8.quant_backend == "bitsandbytes_8bit"
    assert int8.quant_kwargs == {"load_in_8bit": True}
    assert quantization_for(SDXL, "no") is None
    with pytest.raises(UnZipLoRAError, match="use no, nf4 or int8"):
        quantization_for(SDXL, "fp4")


def test_the_loader_hands_the_quantization_to_from_pretrained(tiny_base, monkeypatch):
    base = BaseModel.resolve(tiny_base)
    seen = {}
    pipeline_class = base.family.pipeline_class()
    original = pipeline_class.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        kwargs.pop("quantization_config", None)  # no bitsandbytes here: load the plain model
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "from_pretrained", classmethod(spy))
    load_pipeline(base, quantize="nf4")
    assert seen["quantization_config"].components_to_quantize == ["unet"]
    seen.clear()
    load_pipeline(base)
    assert "quantization_config" not in seen


def test_a_quantized_model_is_moved_never_cast():
    class Quantized(nn.Linear):
        is_quantized = True

        def to(self, *args, **kwargs):
            if any(isinstance(a, torch.dtype) for a in args) or "dtype" in kwargs:
                raise ValueError("Casting a quantized model to a new `dtype` is unsupported")  # as diffusers
            return super().to(*args, **kwargs)

    model = Quantized(2, 2)
    assert to_device(model, torch.device("cpu"), torch.float16).weight.dtype == torch.float32
    assert to_device(nn.Linear(2, 2), torch.device("cpu"), torch.float16).weight.dtype == torch.float16


def test_without_cuda_it_is_one_line_before_anything_is_written(tiny_base, tiny_image, tmp_path):
    from unziplora.decompose import decompose

    check_quantization("no", torch.device("cpu"))  # the default asks for nothing
    config = tiny_config(tiny_base, **{"model.quantize_base": "nf4", "train.device": "cpu"})
    with pytest.raises(UnZipLoRAError, match=r"^--quantize-base nf4 runs on CUDA only \(bitsandbytes\); drop it"):
        decompose(tiny_image, tmp_path / "q", config, progress=False)
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()


def test_without_bitsandbytes_it_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(UnZipLoRAError, match=r"pip install 'unziplora\[bnb\]', or drop --quantize-base"):
        check_quantization("int8", torch.device("cuda"))


def test_the_cli_offers_the_choice():
    from unziplora.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["decompose", "x.png", "--out", "o", "--quantize-base", "nf4"])
    assert args.quantize_base == "nf4"
    with pytest.raises(SystemExit):
        parser.parse_args(["decompose", "x.png", "--out", "o", "--quantize-base", "fp8"])
