"""Training FLUX.1's transformer: flow matching on packed latents, with the branch streams.

Rectified flow (arXiv 2209.03003; flow matching, arXiv 2210.02747) as diffusers'
train_dreambooth_lora_flux.py trains FLUX: x_t = (1 - sigma) x_0 + sigma * noise at a sigma drawn
uniformly from the scheduler's training sigmas (its "none" weighting scheme), the transformer
predicts the velocity noise - x_0 from the 2x2-packed latents at timestep sigma (the scheduler's
timestep / 1000, as FluxPipeline passes it), with (FLUX.1-dev) the guidance value as an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from .flux import STREAMS_KWARG, BranchStreams


class FlowMatching:
    """The denoising objective of a FLUX pipeline (the interface core/train.py's `Denoising` has)."""

    def __init__(self, pipe, family):
        self.family = family
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self.guidance_embeds = bool(family.denoiser_of(pipe).config.get("guidance_embeds", False))

    def plain_conditioning(self, states, pooled, resolution: int, batch: int, device, dtype) -> dict:
        """The transformer's inputs beside the latents for one ordinary prompt: its T5 states and pooled
        CLIP embedding, the text positions (all zero, as FluxPipeline sets them) and the guidance value."""
        states = states.expand(batch, -1, -1).to(device, dtype)
        kwargs = {
            "encoder_hidden_states": states,
            "pooled_projections": pooled.expand(batch, -1).to(device, dtype),
            "txt_ids": torch.zeros(states.shape[1], 3, device=device, dtype=dtype),
        }
        if self.guidance_embeds:
            kwargs["guidance"] = torch.full((batch,), self.family.training_guidance, device=device, dtype=torch.float32)
        return kwargs

    def conditioning(self, embeds, resolution: int, batch: int, device, dtype) -> dict:
        """`plain_conditioning` of p, with p_c's and p_s's states as the branch streams."""
        kwargs = self.plain_conditioning(embeds.combined.states, embeds.combined.pooled, resolution, batch, device,
                                         dtype)
        kwargs["joint_attention_kwargs"] = {STREAMS_KWARG: BranchStreams(embeds.content.states.to(device, dtype),
                                                                        embeds.style.states.to(device, dtype))}
        return kwargs

    def loss(self, transformer, latents, generator, dtype, kwargs: dict) -> torch.Tensor:
        return flow_matching_mse(transformer, self.scheduler, latents, generator, dtype, kwargs)

    # ----- one noising, several predictions (ZipLoRA compares models at the same noise and time) -----
    def noise(self, latents, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, noise, sigma) as training draws them (`noisy_latents`)."""
        noisy, velocity, sigmas = noisy_latents(self.scheduler, latents, generator)
        return noisy, velocity + latents, sigmas

    def renoise(self, latents, noise, sigmas) -> torch.Tensor:
        """Other latents on the same straight path: (1 - sigma) x_0 + sigma * noise."""
        sigma = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        return (1.0 - sigma) * latents + sigma * noise

    def predict(self, transformer, noisy, sigmas, dtype, kwargs: dict) -> torch.Tensor:
        """The transformer's velocity, unpacked to the latents' shape (B, 16, h, w)."""
        return predict_velocity(transformer, noisy, sigmas, dtype, kwargs)


def noisy_latents(scheduler, latents, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, the velocity target noise - x_0, sigma) at uniform random training sigmas; noise and
    sigmas come from the CPU generator, so runs repeat on any device."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    indices = (torch.rand((latents.shape[0],), generator=generator) * scheduler.config.num_train_timesteps).long()
    sigmas = scheduler.sigmas[indices].to(device, torch.float32)
    sigma = sigmas.view(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - sigma) * latents + sigma * noise, noise - latents, sigmas


def flow_matching_mse(transformer, scheduler, latents, generator, dtype, kwargs: dict) -> torch.Tensor:
    """The velocity MSE of one batch of VAE latents (B, 16, h, w)."""
    noisy, target, sigmas = noisy_latents(scheduler, latents, generator)
    pred = predict_velocity(transformer, noisy, sigmas, dtype, kwargs)
    return F.mse_loss(pred.float(), target.float())


def predict_velocity(transformer, noisy, sigmas, dtype, kwargs: dict) -> torch.Tensor:
    """The transformer's velocity for noisy latents (B, 16, h, w): packed 2x2 with their image
    positions as FluxPipeline packs them, unpacked back to (B, 16, h, w)."""
    batch, channels, height, width = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, noisy.device, dtype)
    with torch.autocast(noisy.device.type, dtype=dtype, enabled=dtype != torch.float32):
        pred = transformer(hidden_states=packed.to(dtype), timestep=sigmas.to(dtype), img_ids=img_ids,
                           **kwargs).sample
    return FluxPipeline._unpack_latents(pred, height, width, 1)
