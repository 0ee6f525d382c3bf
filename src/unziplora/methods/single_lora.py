"""One ordinary PEFT LoRA trained on one image: the building block of the baselines.

DreamBooth-LoRA (arXiv 2208.12242 + 2106.09685) trains it on every attention projection;
B-LoRA (arXiv 2403.14572) on the two modules its profile names and splits it afterwards; the block-role probe
of a new base model trains it everywhere and keeps one block at a time. The LoRA is injected
with diffusers' own `unet.add_adapter` (PEFT), so nothing here re-implements LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from ..core.data import CroppedLatents
from ..core.inject import PROJECTIONS, attention_modules
from ..core.prompts import encode_prompts
from ..core.train import StepLog, adamw, diffusion_mse, prediction_type


@dataclass
class SingleLoraSpec:
    """What to train: which attention modules (name prefixes; empty = all) and how long."""

    prompt: str
    rank: int = 64
    steps: int = 600
    lr: float = 5e-5
    resolution: int = 1024
    seed: int = 0
    module_prefixes: tuple[str, ...] = ()
    prior_prompt: str = ""  # class prompt of the prior-preservation images (DreamBooth)
    prior_weight: float = 1.0


@dataclass
class LoopState:
    """What callbacks (callbacks.py) see of this loop: the fields of `train.Trainer` they read."""

    step: int = 0
    should_stop: bool = False


def target_modules(unet, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Full names of the attention projections under the given prefixes (all when empty)."""
    names = []
    for name, _ in attention_modules(unet):
        if not prefixes or any(name.startswith(p + ".") for p in prefixes):
            names += [f"{name}.{projection}" for projection in PROJECTIONS]
    return names


def train_single_lora(pipe, image, spec: SingleLoraSpec, device: torch.device, progress: bool = False,
                      prior_images=(), callbacks=()) -> dict[str, torch.Tensor]:
    """Train one LoRA (alpha = rank, scale 1) and return its PEFT state dict (keys without 'unet.').

    Uses the same data path (crops, latent cache, time ids) and loss (epsilon or v-prediction,
    as the base model's scheduler says) as UnZipLoRA training, so comparisons differ only in
    the adapter. With `prior_images` (the base model's own
    samples of `spec.prior_prompt`), each step adds DreamBooth's prior-preservation term,
    prior_weight * ||eps - eps_theta(x'_t, c_pr)||^2 on one of them (arXiv 2208.12242, Eq. 2).
    `callbacks` (callbacks.py) see a `LoopState`; one that sets `should_stop` ends training with
    KeyboardInterrupt after the current step (a baseline keeps no checkpoint).
    """
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type(scheduler)  # an unsupported objective fails before any work
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    pipe.text_encoder.to(device)
    pipe.text_encoder_2.to(device)
    texts = [spec.prompt] + ([spec.prior_prompt or spec.prompt] if prior_images else [])
    embeds, pooled = encode_prompts(pipe, texts, device)
    prior_embeds, prior_pooled = embeds[-1:], pooled[-1:]  # the class prompt's (unused without priors)
    embeds, pooled = embeds[:1], pooled[:1]
    unet = pipe.unet.to(device)
    unet.requires_grad_(False)
    names = target_modules(unet, spec.module_prefixes)
    unet.add_adapter(LoraConfig(r=spec.rank, lora_alpha=spec.rank, init_lora_weights="gaussian", target_modules=names))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    latents = CroppedLatents(image, spec.resolution, pipe.vae.to(device), device)
    priors = [CroppedLatents(picture, spec.resolution, pipe.vae, device) for picture in prior_images]

    def mse(data: CroppedLatents, states, pooled_states) -> torch.Tensor:
        latent, _ = data.sample(generator)
        kwargs = {"encoder_hidden_states": states,
                  "added_cond_kwargs": {"text_embeds": pooled_states, "time_ids": data.time_ids().to(device)}}
        return diffusion_mse(unet, scheduler, latent.to(device), generator, torch.float32, kwargs)

    loop = LoopState()
    for cb in callbacks:
        cb.on_start(loop)
    for _ in tqdm(range(spec.steps), desc="single LoRA", disable=not progress):
        loss = mse(latents, embeds, pooled)
        if priors:
            pick = int(torch.randint(len(priors), (1,), generator=generator))
            loss = loss + spec.prior_weight * mse(priors[pick], prior_embeds, prior_pooled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loop.step += 1
        if callbacks:
            log = StepLog(loop.step - 1, loss.item(), loss.item(), 0.0, False)
            for cb in callbacks:
                cb.on_step(loop, log)
            if loop.should_stop:
                unet.delete_adapters(list(unet.peft_config))
                raise KeyboardInterrupt
    for cb in callbacks:
        cb.on_end(loop)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    unet.delete_adapters(list(unet.peft_config))  # leave the pipeline as it came
    return state


def keep_modules(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The part of a LoRA state dict under the given module prefixes (B-LoRA's split)."""
    return {k: v for k, v in state.items() if any(k.startswith(p + ".") for p in prefixes)}
