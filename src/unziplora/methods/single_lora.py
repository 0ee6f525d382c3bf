"""One ordinary PEFT LoRA trained on one image: the building block of the baselines.

DreamBooth-LoRA (arXiv 2208.12242 + 2106.09685) trains it on every attention projection;
B-LoRA (arXiv 2403.14572) on the two modules its profile names and splits it afterwards; the block-role probe
of a new base model trains it everywhere and keeps one block at a time. The LoRA is injected
with diffusers' own `add_adapter` (PEFT) on the denoiser (a UNet, or FLUX.1's transformer, trained
with the family's objective: core/objective.py `denoising_for`), so nothing here re-implements LoRA. The loop is
the one every method runs (`core.train.fit`) and honours the run's training settings as
UnZipLoRA's does: optimiser (AdamW or 8-bit AdamW, betas, eps, weight decay), gradient clipping,
mixed precision (frozen UNet in fp16/bf16, LoRA in fp32, autocast, a GradScaler under fp16) and
gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from ..config import TrainConfig
from ..core.data import CroppedLatents
from ..core.inject import projection_layers
from ..core.prompts import encode_prompts
from ..core.objective import denoising_for
from ..core.train import NonFiniteLoss, StepLog, clip_gradients, fit, make_optimizer, text_encoders
from ..models.families import family_of
from ..models.loading import to_device


@dataclass
class SingleLoraSpec:
    """What to train: which attention modules (name prefixes; empty = all), how long, and how."""

    prompt: str
    rank: int = 64
    steps: int = 600
    lr: float = 5e-5
    resolution: int = 1024
    seed: int = 0
    module_prefixes: tuple[str, ...] = ()
    prior_prompt: str = ""  # class prompt of the prior-preservation images (DreamBooth)
    prior_weight: float = 1.0
    train: TrainConfig = field(default_factory=TrainConfig)  # optimiser, clipping, precision, checkpointing


def target_modules(denoiser, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Full names of the attention projections under the given prefixes (all when empty): the ones
    UnZipLoRA trains (a UNet's to_q/k/v/out.0; FLUX's image and text projections, core/flux.py)."""
    return [name for name, _ in projection_layers(denoiser)
            if not prefixes or any(name.startswith(p + ".") for p in prefixes)]


class SingleLoraLoop:
    """One LoRA (alpha = rank, scale 1) training on one image, one `train_step` at a time.

    Uses the same data path (crops, latent cache, time ids) and loss (epsilon or v-prediction,
    as the base model's scheduler says) as UnZipLoRA training, so comparisons differ only in
    the adapter. With `prior_images` (the base model's own samples of `spec.prior_prompt`), each
    step adds DreamBooth's prior-preservation term, prior_weight * ||eps - eps_theta(x'_t, c_pr)||^2
    on one of them (arXiv 2208.12242, Eq. 2).
    """

    def __init__(self, pipe, image, spec: SingleLoraSpec, device: torch.device, dtype: torch.dtype = torch.float32,
                 prior_images=()):
        self.spec, self.pipe, self.device, self.dtype = spec, pipe, torch.device(device), dtype
        self.total_steps = spec.steps
        self.step, self.should_stop, self.history, self.timings = 0, False, [], {}
        # the base model's objective (an unsupported prediction type fails here, before any work):
        # DDPM noise / velocity for a UNet, flow matching for FLUX's transformer
        self.objective = denoising_for(pipe)
        torch.manual_seed(spec.seed)
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.family = family_of(pipe)
        for encoder in text_encoders(pipe):
            encoder.to(self.device)
        texts = [spec.prompt] + ([spec.prior_prompt or spec.prompt] if prior_images else [])
        embeds, pooled = encode_prompts(pipe, texts, self.device)
        self.embeds, self.pooled = embeds[:1], None if pooled is None else pooled[:1]
        # the class prompt's (unused without priors)
        self.prior_embeds, self.prior_pooled = embeds[-1:], None if pooled is None else pooled[-1:]
        self.unet = unet = to_device(self.family.denoiser_of(pipe), self.device, dtype)  # a UNet or FLUX's transformer
        unet.requires_grad_(False)
        names = target_modules(unet, spec.module_prefixes)
        unet.add_adapter(LoraConfig(r=spec.rank, lora_alpha=spec.rank, init_lora_weights="gaussian",
                                    target_modules=names))
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:  # the LoRA trains in fp32 whatever the frozen UNet's precision
            p.data = p.data.float()
        if spec.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.optimizer = make_optimizer([{"params": self.params, "lr": spec.lr}], spec.train)
        # fp16 gradients of small LoRA updates underflow without loss scaling (as train.Trainer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.latents = CroppedLatents(image, spec.resolution, pipe.vae.to(self.device), self.device)
        self.priors = [CroppedLatents(picture, spec.resolution, pipe.vae, self.device) for picture in prior_images]

    @property
    def max_grad_norm(self) -> float:
        return self.spec.train.max_grad_norm

    def _mse(self, data: CroppedLatents, states, pooled_states) -> torch.Tensor:
        latent, _ = data.sample(self.generator)
        kwargs = self.objective.plain_conditioning(states, pooled_states, data.resolution, 1, self.device, self.dtype)
        return self.objective.loss(self.unet, latent.to(self.device), self.generator, self.dtype, kwargs)

    def train_step(self) -> StepLog:
        loss = self._mse(self.latents, self.embeds, self.pooled)
        if self.priors:
            pick = int(torch.randint(len(self.priors), (1,), generator=self.generator))
            loss = loss + self.spec.prior_weight * self._mse(self.priors[pick], self.prior_embeds, self.prior_pooled)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(self.step, loss.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        log = StepLog(self.step, loss.item(), loss.item(), 0.0, False)
        self.step += 1
        self.history.append(log)
        return log

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained LoRA's PEFT state dict (keys without 'unet.' / 'transformer.'), on the CPU."""
        return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}

    def release(self) -> None:
        """Take the adapter out: the pipeline is left as it came."""
        self.unet.delete_adapters(list(self.unet.peft_config))
        if self.spec.train.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()


def train_single_lora(pipe, image, spec: SingleLoraSpec, device: torch.device, progress: bool = False,
                      prior_images=(), callbacks=(), dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Train one LoRA with `fit` and return its PEFT state dict; the pipeline is left as it came.
    A stop a callback requests ends training with KeyboardInterrupt after the current step."""
    from ..core.callbacks import ProgressBar

    loop = SingleLoraLoop(pipe, image, spec, device, dtype, prior_images)
    try:
        fit(loop, [ProgressBar(progress, "single LoRA"), *callbacks])
        return loop.lora_state()
    finally:
        loop.release()


def keep_modules(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The part of a LoRA state dict under the given module prefixes (B-LoRA's split)."""
    return {k: v for k, v in state.items() if any(k.startswith(p + ".") for p in prefixes)}
