"""The training objective of a base model's denoiser: DDPM noise or velocity prediction for a UNet
(SDXL, SD), flow matching for FLUX's transformer (flow.py), picked by `denoising_for`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..errors import UnZipLoRAError
from ..models.families import Family, family_of
from .attention import CONTENT_KWARG, STYLE_KWARG


class Denoising:
    """A UNet's denoising objective (DDPM noise or velocity prediction) and its conditioning; FLUX's
    flow matching (flow.py) has the same interface. `denoising_for` picks by the family's denoiser."""

    def __init__(self, scheduler, family: Family):
        self.scheduler, self.family = scheduler, family
        prediction_type(scheduler)

    @classmethod
    def for_pipeline(cls, pipe, family: Family) -> "Denoising":
        return cls(DDPMScheduler.from_config(pipe.scheduler.config), family)

    def plain_conditioning(self, states, pooled, resolution: int, batch: int, device, dtype) -> dict:
        """The UNet's inputs for one ordinary prompt (one LoRA, no branches): its text states and the
        family's added conditioning."""
        return {"encoder_hidden_states": states.expand(batch, -1, -1).to(device, dtype),
                "added_cond_kwargs": self.family.added_cond(pooled, resolution, batch, device, dtype)}

    def conditioning(self, embeds, resolution: int, batch: int, device, dtype) -> dict:
        return {
            "encoder_hidden_states": embeds.combined.states.expand(batch, -1, -1).to(dtype),
            "added_cond_kwargs": self.family.added_cond(embeds.combined.pooled, resolution, batch, device, dtype),
            "cross_attention_kwargs": {
                CONTENT_KWARG: embeds.content.states.expand(batch, -1, -1).to(dtype),
                STYLE_KWARG: embeds.style.states.expand(batch, -1, -1).to(dtype),
            },
        }

    def loss(self, unet, latents, generator, dtype, kwargs: dict) -> torch.Tensor:
        return diffusion_mse(unet, self.scheduler, latents, generator, dtype, kwargs)

    # ----- one noising, several predictions (ZipLoRA compares models at the same noise and time) -----
    def noise(self, latents, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, noise, timesteps), as training draws them (`add_training_noise`)."""
        return add_training_noise(self.scheduler, latents, generator)

    def renoise(self, latents, noise, timesteps) -> torch.Tensor:
        """Other latents noised with the same noise at the same timesteps."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def predict(self, unet, noisy, timesteps, dtype, kwargs: dict) -> torch.Tensor:
        """The UNet's prediction (noise or velocity, as its scheduler says), shaped like the latents."""
        with torch.autocast(noisy.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return unet(noisy.to(dtype), timesteps, **kwargs).sample


def denoising_for(pipe):
    """The training objective of the pipeline's denoiser: `Denoising` for a UNet, flow matching for
    FLUX's transformer (flow.py)."""
    family = family_of(pipe)
    if family.denoiser == "transformer":
        from .flow import FlowMatching

        return FlowMatching(pipe, family)
    return Denoising.for_pipeline(pipe, family)


PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type(noise_scheduler) -> str:
    """What the base model's UNet predicts, from its scheduler config: "epsilon" (SDXL) or
    "v_prediction"; anything else is one clear error."""
    kind = noise_scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise UnZipLoRAError(
            f"the base model's scheduler predicts {kind!r}; training supports {' and '.join(PREDICTION_TYPES)} "
            "(set prediction_type in its scheduler/scheduler_config.json if that is wrong)"
        )
    return kind


def add_training_noise(noise_scheduler, latents, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, noise, timesteps) at uniform random timesteps (DDPM, arXiv 2006.11239, Alg. 1).

    Noise and timesteps come from the CPU generator, so runs are reproducible on any device.
    """
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    num_train = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_train, (latents.shape[0],), generator=generator).to(device)
    return noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def diffusion_mse(unet, noise_scheduler, latents, generator, dtype, unet_kwargs: dict) -> torch.Tensor:
    """The denoising MSE at a uniform random timestep (DDPM, arXiv 2006.11239, Eq. 14).

    The target follows the base model's scheduler (`prediction_type`): the noise for epsilon
    prediction, the velocity sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 for v-prediction
    (arXiv 2202.00512, Sec. 4; diffusers' `get_velocity`).
    """
    kind = prediction_type(noise_scheduler)
    noisy, noise, timesteps = add_training_noise(noise_scheduler, latents, generator)
    target = noise if kind == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
    with torch.autocast(latents.device.type, dtype=dtype, enabled=dtype != torch.float32):
        pred = unet(noisy.to(dtype), timesteps, **unet_kwargs).sample
    return F.mse_loss(pred.float(), target.float())
