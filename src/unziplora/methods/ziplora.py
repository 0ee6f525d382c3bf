"""ZipLoRA (arXiv 2311.13600, Sec. 3): merge a content LoRA and a style LoRA with learned mergers.

Each column of each layer gets merger coefficients m_c, m_s (init 1). Only they train, so that
the merged model with the content prompt reproduces the content LoRA's prediction, with the
style prompt the style LoRA's prediction, while the two merger vectors of a layer stay
orthogonal:
    L = ||D_merged(x_c, p_c) - D_Lc(x_c, p_c)||^2 + ||D_merged(x_s, p_s) - D_Ls(x_s, p_s)||^2
        + lambda * sum_layers |cos(m_c, m_s)|
Targets D_Lc, D_Ls are the single-LoRA predictions, computed once before training (the merged
model with mergers at 1 and one branch on is exactly that LoRA). Noisy latents come from the
runs' input images when the sources are run folders, else from N(0, 1) (data-free; a deviation:
ZipLoRA noises the LoRAs' training images).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..branch import Branch
from ..data import CroppedLatents, load_image, sdxl_time_ids
from ..errors import UnZipLoRAError
from ..generate import INFERENCE_PROFILE
from ..lora.inject import inject_two_branch_lora
from ..models import load_pipeline
from ..prompts import encode_prompts
from ..sources import BranchSource


def merger_cosine(lora) -> torch.Tensor:
    """sum over layers of |cos(m_c, m_s)| (ZipLoRA's orthogonality term)."""
    terms = [F.cosine_similarity(l.merger(Branch.CONTENT), l.merger(Branch.STYLE), dim=0).abs() for l in lora.layers.values()]
    return torch.stack(terms).sum()


def _latents(source: BranchSource, pipe, resolution: int, generator: torch.Generator, n: int) -> list[tuple]:
    """(latent, time_ids) samples: crops of the run's input image, or Gaussian latents."""
    if source.run is not None and (source.run.path / "input.png").is_file():
        data = CroppedLatents(load_image(source.run.path / "input.png"), resolution, pipe.vae, pipe.unet.device)
        return [(lat, data.time_ids(crop)) for lat, crop in (data.sample(generator) for _ in range(n))]
    size = resolution // pipe.vae_scale_factor
    time_ids = sdxl_time_ids(resolution)
    channels = pipe.unet.config.in_channels
    return [(torch.randn(1, channels, size, size, generator=generator), time_ids) for _ in range(n)]


def ziplora_merge(content: BranchSource, style: BranchSource, base_model: str, prompts: tuple[str, str],
                  resolution: int, steps: int = 100, lr: float = 0.01, weight: float = 0.01, samples: int = 8,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Learn the mergers; return one ordinary LoRA (PEFT keys) with them folded into B."""
    from .merge import direct_merge

    if steps <= 0:
        raise UnZipLoRAError(f"ZipLoRA steps must be positive, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    pipe = load_pipeline(base_model)
    embeds, pooled = encode_prompts(pipe, list(prompts), pipe.unet.device)
    unet = pipe.unet.requires_grad_(False)
    lora = inject_two_branch_lora(unet, INFERENCE_PROFILE, max(content.rank, style.rank))
    # Sources are taken as exported ordinary LoRAs (folded), so the mergers start at 1.
    lora.load_branch(content.branch_state(lora), Branch.CONTENT, str(content.path))
    lora.load_branch(style.branch_state(lora), Branch.STYLE, str(style.path))
    for p in lora.parameters("lora"):  # only the mergers train
        p.requires_grad_(False)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    plan = []  # (branch, prompt index, noisy latent, timestep, time ids, target)
    for i, (branch, source) in enumerate(((Branch.CONTENT, content), (Branch.STYLE, style))):
        lora.set_active({branch})
        for latent, time_ids in _latents(source, pipe, resolution, generator, samples):
            noise = torch.randn(latent.shape, generator=generator)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator)
            noisy = scheduler.add_noise(latent, noise, t)
            with torch.no_grad():
                target = unet(noisy, t, embeds[i : i + 1], added_cond_kwargs={"text_embeds": pooled[i : i + 1], "time_ids": time_ids}).sample
            plan.append((i, noisy, t, time_ids, target))
    lora.set_active({Branch.CONTENT, Branch.STYLE})
    optimizer = torch.optim.Adam(lora.parameters("merger"), lr=lr)
    for step in range(steps):
        i, noisy, t, time_ids, target = plan[step % len(plan)]
        pred = unet(noisy, t, embeds[i : i + 1], added_cond_kwargs={"text_embeds": pooled[i : i + 1], "time_ids": time_ids}).sample
        loss = F.mse_loss(pred, target) + weight * merger_cosine(lora)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return direct_merge(lora.folded_lora(Branch.CONTENT), lora.folded_lora(Branch.STYLE))
