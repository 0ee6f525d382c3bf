"""Every method trains with the user's settings or refuses them by name, and the fp16 path with a
real GradScaler works on the CPU: finite losses, masks growing by schedule, loss-scale-aware cone
scores, an overflow step skipped and scored again on the next step."""

import math

import pytest
import torch

from unziplora.core.columns import CONE_LOSS_SCALE, columns_per_refresh
from unziplora.core.prompts import training_prompts
from unziplora.core.train import Trainer
from unziplora.decompose import decompose
from unziplora.errors import UnZipLoRAError
from unziplora.methods import resolve_config
from unziplora.models.base import BaseModel
from unziplora.models.profiles import resolve_profile
from unziplora.names import Branch, Method, Role

from ..conftest import tiny_config

SETTINGS = {"train.adam_betas": (0.5, 0.6), "train.adam_eps": 1e-6, "train.weight_decay": 0.25,
            "train.max_grad_norm": 0.3, "train.gradient_checkpointing": True}


@pytest.mark.parametrize("method", list(Method))
def test_every_method_trains_with_the_users_optimiser_clipping_and_checkpointing(method, tiny_base, tiny_image,
                                                                                 tmp_path, clip_dir, small_selection):
    clip = {"train.clip_model": str(clip_dir)}  # what Inspiration Tree scores its seeds with; the others ignore it
    config = tiny_config(tiny_base, **{"train.steps": 2, "sample.seeds": [0]}, **SETTINGS, **clip)
    run = decompose(tiny_image, tmp_path / "run", config, method, progress=False)
    used = run.manifest.training  # read off the optimiser and the UNet that trained, not the config
    assert (used["adam_betas"], used["adam_eps"], used["weight_decay"]) == ([0.5, 0.6], 1e-6, 0.25)
    assert used["max_grad_norm"] == 0.3 and used["gradient_checkpointing"] is True
    assert (used["dtype"], used["grad_scaler"], used["optimizer"]) == ("float32", False, "AdamW")
    default = decompose(tiny_image, tmp_path / "default", tiny_config(tiny_base, **{"train.steps": 1}, **clip), method,
                        progress=False).manifest.training
    assert (default["adam_betas"], default["weight_decay"], default["gradient_checkpointing"]) == ([0.9, 0.999], 1e-4,
                                                                                                 False)


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("setting, message", [
    ({"train.mixed_precision": "fp16"}, "mixed precision fp16 needs a GPU"),
    ({"train.mixed_precision": "bf16"}, "mixed precision bf16 needs a GPU"),
    ({"train.use_8bit_adam": True}, "8-bit AdamW .* runs on CUDA only"),
])
def test_settings_this_machine_cannot_honour_are_refused_by_name(method, setting, message, tiny_base, tiny_image,
                                                                 tmp_path, clip_dir):
    config = tiny_config(tiny_base, **{"train.steps": 1, "train.clip_model": str(clip_dir)}, **setting)
    with pytest.raises(UnZipLoRAError, match=message):
        decompose(tiny_image, tmp_path / "run", config, method, progress=False)
    assert not (tmp_path / "run").exists()


def fp16_trainer(tiny_base, tiny_image, **overrides) -> Trainer:
    """The UnZipLoRA trainer as a CUDA run builds it (fp16 UNet, fp32 LoRA, autocast, GradScaler), on the CPU."""
    base = BaseModel.resolve(tiny_base)
    config = resolve_config({"prompts.subject": "cat", "prompts.style": "sketch", "train.resolution": 32,
                             "lora.rank": 4, "train.steps": 6, "masks.refresh_every": 2, **overrides}, base=base).config
    pipe = base.load(torch.float16)
    return Trainer.prepare(config, pipe, tiny_image, training_prompts(config.prompts), resolve_profile("sdxl"),
                           torch.device("cpu"), torch.float16)


def masked_layers(trainer):
    return {n: l for n, l in trainer.lora.layers.items() if all(r is Role.MASKED for r in l.roles.values())}


def test_fp16_with_a_real_grad_scaler_trains_and_grows_the_masks_by_schedule(tiny_base, tiny_image):
    trainer = fp16_trainer(tiny_base, tiny_image)
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == CONE_LOSS_SCALE
    assert trainer.pipe.unet.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainer.lora.lora_parameters())
    layers = masked_layers(trainer)
    assert layers
    for refreshes in (1, 2, 3):  # steps 0, 2, 4 refresh: 10 %, 20 %, 30 % of each layer's columns
        for _ in range(2):
            assert math.isfinite(trainer.train_step().loss)
        for name, layer in layers.items():
            k = columns_per_refresh(layer.out_features, 0.1)
            held = [int(layer.mask(b).sum()) for b in (Branch.CONTENT, Branch.STYLE)]
            assert held == [refreshes * k] * 2, (name, held)


def test_cone_scores_use_the_scalers_scale_and_select_as_the_emulated_scale_does(tiny_base, tiny_image):
    trainer = fp16_trainer(tiny_base, tiny_image)
    layers, real, seen = masked_layers(trainer), trainer.lora.refresh_masks, []

    def compare(fraction, threshold, grad_scale):
        before = {n: layer.masks.clone() for n, layer in layers.items()}
        emulated = {}
        for name, layer in layers.items():  # the same gradients, scored at the emulated 2^16
            layer.refresh_masks(fraction, threshold, CONE_LOSS_SCALE)
            emulated[name] = layer.masks.clone()
            layer.masks.copy_(before[name])
        tied = real(fraction, threshold, grad_scale)
        seen.append((grad_scale, all(torch.equal(layer.masks, emulated[n]) for n, layer in layers.items())))
        return tied

    trainer.lora.refresh_masks = compare
    trainer.train_step()
    assert seen == [(CONE_LOSS_SCALE, True)]  # the scaler's own scale, which selects what 2^16 selects


def test_an_overflowing_refresh_step_is_skipped_and_scored_on_the_next_step(tiny_base, tiny_image):
    trainer = fp16_trainer(tiny_base, tiny_image)
    target = trainer.lora.lora_parameters()[0]
    hook = target.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    weights = [p.detach().clone() for p in trainer.lora.lora_parameters()]
    trainer.train_step()  # step 0, a refresh step, overflows
    assert trainer.refresh_pending and trainer.scaler.get_scale() == CONE_LOSS_SCALE / 2
    assert all(not layer.masks.any() for layer in masked_layers(trainer).values())  # not scored
    assert all(torch.equal(w, p) for w, p in zip(weights, trainer.lora.lora_parameters()))  # no update
    hook.remove()
    log = trainer.train_step()  # step 1 scores instead, at the lowered scale
    assert log.refresh and not trainer.refresh_pending
    for layer in masked_layers(trainer).values():
        assert int(layer.mask(Branch.CONTENT).sum()) == columns_per_refresh(layer.out_features, 0.1)
