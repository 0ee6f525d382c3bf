"""What one training step at a given size will cost on this machine, before anything is trained.

A floor, not a forecast: the denoiser's forward pass is built from its config on the meta device
(no weights, no memory) and its floating-point operations counted at that size with torch's
FlopCounterMode; a training step is about three forward passes (the backward pass costs about
two; Kaplan et al., arXiv 2001.08361, Sec. 2.1). Divided by the speed at which this machine
multiplies matrices, that is a time no real step beats (convolutions, attention and memory traffic
run slower than a large matmul). What makes it worth having: self-attention grows with the square
of the number of pixels, so the cost of a size far above the model's own is far above the ratio
of the pixel counts, and a user asking for 4096 px on a 64 px model should see hours, not a ratio.
"""

from __future__ import annotations

import time


def forward_flops(base, resolution: int) -> float | None:
    """Floating-point operations of one denoiser forward pass at `resolution` px (batch 1, 77 text
    tokens), or None where the base model's config is not available here or is no UNet."""
    unet_config, vae_config = base.config("unet"), base.config("vae")
    if not unet_config or not vae_config or not vae_config.get("block_out_channels"):
        return None
    import torch
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    side = resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
    meta = {"device": "meta"}
    latent = torch.zeros(1, unet_config.get("in_channels", 4), side, side, **meta)
    width = unet_config["cross_attention_dim"]  # an int, or one per block (all equal in SD and SDXL)
    text = torch.zeros(1, 77, width if isinstance(width, int) else width[0], **meta)
    added = None
    if unet_config.get("addition_embed_type") == "text_time":  # SDXL's pooled text and six size numbers
        pooled = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
        added = {"text_embeds": torch.zeros(1, pooled, **meta), "time_ids": torch.zeros(1, 6, **meta)}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(latent, torch.zeros(1, **meta), text, added_cond_kwargs=added)
    return float(counter.get_total_flops())


def matmul_flops_per_s(device: str = "cpu", size: int = 512, repeats: int = 5) -> float:
    """This machine's speed at multiplying two fp32 size x size matrices (the best of `repeats`)."""
    import torch

    a = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / max(best, 1e-9)


def step_seconds_floor(base, resolution: int) -> tuple[float, str] | None:
    """(seconds no training step at `resolution` beats here, how it was reckoned), or None where the
    denoiser cannot be counted (no config here, or no UNet)."""
    try:
        flops = forward_flops(base, resolution)
        if flops is None:
            return None
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        speed = matmul_flops_per_s(device)
    except Exception:  # an estimate must never stand between a user and the real error message
        return None
    step = 3 * flops
    return step / speed, (f"its {_si(step)}FLOP of a training step at the {_si(speed)}FLOP/s this machine's "
                          f"{'GPU' if device == 'cuda' else 'CPU'} multiplies matrices at")


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: 0.05 s, 12 s, 3.5 min, 2.1 h, 4.0 days."""
    for unit, size, from_ in (("days", 86400, 2 * 86400), ("h", 3600, 3600), ("min", 60, 60)):
        if seconds >= from_:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def _si(value: float) -> str:
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= size:
            return f"{value / size:,.1f} {prefix}"
    return f"{value:,.0f} "
