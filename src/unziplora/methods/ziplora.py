"""ZipLoRA (arXiv 2311.13600, Sec. 3): merge a content LoRA and a style LoRA with learned mergers.

The paper's code is not public; this follows the public reference, mkshing/ziplora-pytorch
(`ZipLoRALinearLayer`, `train_dreambooth_ziplora_sdxl.py`). Each layer's two updates
dW_c = B_c A_c and dW_s = B_s A_s (out x in) get one merger coefficient per column of the
(out x in) matrix, i.e. per INPUT feature: m_c, m_s of shape (in,), initialised to 1, not clamped:

    dW = dW_c diag(m_c) + dW_s diag(m_s)

Only the mergers train. Every step draws fresh noise and one timestep, noises a latent of each
LoRA's image with them, and asks the merged model to predict what each LoRA alone predicts with
its own prompt (a UNet: DDPM noising and its noise or velocity prediction; FLUX.1's transformer:
the rectified-flow path x_t = (1 - sigma) x_0 + sigma * noise and its velocity, core/flow.py; the
loss is the same distillation of each LoRA's own prediction, whatever the denoiser predicts):

    L = ||D_merged(x_c, p_c) - D_Lc(x_c, p_c)||^2 + ||D_merged(x_s, p_s) - D_Ls(x_s, p_s)||^2
        + lambda * sum over layers of mean_i |m_c[i] m_s[i]|

with the reference's defaults: AdamW, lr 5e-5, weight decay 1e-4, gradient clip 1.0, lambda 0.01,
100 steps. The latents come from the runs' input images when the sources are run folders; plain
LoRA files bring none, so they get N(0, 1) latents (a deviation: ZipLoRA noises the LoRAs'
training images). The result is stored exactly as one ordinary LoRA: dW_c diag(m_c) = B_c (A_c
diag(m_c)), so the mergers scale A's columns and the two LoRAs are rank-concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.layer import BRANCHES
from ..names import Branch
from ..core.data import CroppedLatents, load_image
from ..models.families import family_of
from ..errors import UnZipLoRAError
from ..models.loading import pick_device
from ..core.prompts import encode_prompts
from ..run.sources import BranchSource
from ..core.objective import denoising_for
from ..core.train import StepLog, adamw, fit

DEFAULTS = {"steps": 100, "lr": 5e-5, "weight": 0.01}  # mkshing/ziplora-pytorch README command


class ZipLoraLinear(nn.Module):
    """A frozen Linear plus two fixed LoRA updates, each scaled per input feature by a merger.

    `alone` None applies both with their mergers; a Branch, that one LoRA alone, as trained (the
    reference's forward types "merge", "weight_1", "weight_2").
    """

    def __init__(self, base: nn.Linear, content: tuple | None, style: tuple | None):
        super().__init__()
        self.base = base
        self.loras = {Branch.CONTENT: content, Branch.STYLE: style}  # (A (r, in), B (out, r)) or None
        self.mergers = nn.Parameter(torch.ones(2, base.in_features, device=base.weight.device))
        self.alone: Branch | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for i, branch in enumerate(BRANCHES):
            lora = self.loras[branch]
            if lora is None or self.alone not in (None, branch):
                continue
            a, b = lora
            scaled = x * self.mergers[i] if self.alone is None else x
            out = out + F.linear(F.linear(scaled, a), b)
        return out

    def merger_overlap(self) -> torch.Tensor:
        """mean_i |m_c[i] m_s[i]|: this layer's term of the reference's similarity loss."""
        return (self.mergers[0] * self.mergers[1]).abs().mean()


def merged_lora(layers: dict[str, ZipLoraLinear]) -> dict[str, torch.Tensor]:
    """The merged update of every layer as one ordinary LoRA (PEFT keys), exact."""
    from .merge import direct_merge

    parts = {Branch.CONTENT: {}, Branch.STYLE: {}}
    for name, layer in layers.items():
        for i, kind in enumerate(BRANCHES):
            if layer.loras[kind] is not None:
                a, b = layer.loras[kind]
                parts[kind][f"{name}.lora_A.weight"] = (a * layer.mergers[i].detach()).cpu().contiguous()
                parts[kind][f"{name}.lora_B.weight"] = b.cpu().contiguous()
    return direct_merge(parts[Branch.CONTENT], parts[Branch.STYLE])


def inject_ziplora(unet: nn.Module, content: dict[str, torch.Tensor], style: dict[str, torch.Tensor]) -> dict[str, ZipLoraLinear]:
    """Put a ZipLoraLinear on every projection either LoRA (PEFT keys) updates (a UNet or FLUX's
    transformer: the stock attention processors call the projections as modules)."""
    device = next(unet.parameters()).device
    modules = sorted({k[: -len(".lora_A.weight")] for k in (*content, *style) if k.endswith(".lora_A.weight")})
    layers = {}
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        try:
            parent, base = unet.get_submodule(parent_name), unet.get_submodule(name)
        except AttributeError:
            raise UnZipLoRAError(f"the LoRAs update {name}, which this base model does not have; "
                                 "give the base model they were trained on") from None

        def pair(state):
            if f"{name}.lora_A.weight" not in state:
                return None
            return tuple(state[f"{name}.lora_{x}.weight"].float().to(device) for x in ("A", "B"))

        layers[name] = ZipLoraLinear(base, pair(content), pair(style))
        setattr(parent, child, layers[name])
    return layers


def _latent_sampler(source: BranchSource, pipe, resolution: int, generator: torch.Generator):
    """A function drawing one latent (1, C, h, w): a crop of the run's input image, or N(0, 1)."""
    device = family_of(pipe).denoiser_of(pipe).device
    if source.run is not None and (source.run.path / "input.png").is_file():
        data = CroppedLatents(load_image(source.run.path / "input.png"), resolution, pipe.vae, device)
        return lambda: data.sample(generator)[0].to(device)
    size = resolution // pipe.vae_scale_factor
    shape = (1, pipe.vae.config.latent_channels, size, size)
    return lambda: torch.randn(shape, generator=generator).to(device)


class ZipLoraLoop:
    """ZipLoRA's merger training, one `train_step` at a time: the loop `core.train.fit` runs for every
    method, so merges get the same progress bar, callbacks and Ctrl-C handling as training."""

    def __init__(self, pipe, layers: dict[str, ZipLoraLinear], prompts: tuple[str, str], samplers, resolution: int,
                 steps: int, lr: float, weight: float, generator: torch.Generator):
        self.family = family_of(pipe)
        self.denoiser = self.family.denoiser_of(pipe)
        device, dtype = self.denoiser.device, self.denoiser.dtype
        self.layers, self.samplers, self.generator, self.weight = layers, samplers, generator, weight
        # the base model's own objective: DDPM noising for a UNet, the flow-matching path for FLUX
        self.objective, self.dtype = denoising_for(pipe), dtype
        embeds, pooled = encode_prompts(pipe, list(prompts), device)
        self.inputs = [self.objective.plain_conditioning(embeds[i : i + 1], None if pooled is None else pooled[i : i + 1],
                                                         resolution, 1, device, dtype) for i in range(2)]
        self.mergers = [layer.mergers for layer in layers.values()]
        self.shared = [layer for layer in layers.values() if all(layer.loras.values())]
        # the reference's optimiser: AdamW, weight decay 1e-4, gradient clipping 1.0
        self.optimizer = adamw(self.mergers, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
        self.total_steps, self.step, self.should_stop, self.history, self.timings = steps, 0, False, [], {}

    def _predict(self, alone: Branch | None, noisy, t, i: int) -> torch.Tensor:
        for layer in self.layers.values():
            layer.alone = alone
        return self.objective.predict(self.denoiser, noisy, t, self.dtype, self.inputs[i])

    def train_step(self) -> StepLog:
        # One noise and one timestep for both latents, as the reference draws them.
        noisy_content, noise, t = self.objective.noise(self.samplers[0](), self.generator)
        noisy = (noisy_content, self.objective.renoise(self.samplers[1](), noise, t))
        with torch.no_grad():
            targets = [self._predict(branch, noisy[i], t, i) for i, branch in enumerate(BRANCHES)]
        mse = sum(F.mse_loss(self._predict(None, noisy[i], t, i).float(), targets[i].float()) for i in range(2))
        overlap = torch.stack([layer.merger_overlap() for layer in self.shared]).sum() if self.shared else torch.zeros(())
        loss = mse + self.weight * overlap
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.mergers, 1.0)
        self.optimizer.step()
        log = StepLog(self.step, loss.item(), mse.item(), overlap.item(), False)
        self.step += 1
        self.history.append(log)
        return log


def ziplora_merge(content: BranchSource, style: BranchSource, base, prompts: tuple[str, str],
                  resolution: int, steps: int = DEFAULTS["steps"], lr: float = DEFAULTS["lr"],
                  weight: float = DEFAULTS["weight"], seed: int = 0, device: str = "auto",
                  progress: bool = False, callbacks=()) -> dict[str, torch.Tensor]:
    """Learn the per-input-feature mergers on `device` over the resolved base model `base` (with
    `core.train.fit`, the callbacks seeing the loop); return the merged LoRA (PEFT keys)."""
    from ..core.callbacks import ProgressBar

    if steps <= 0:
        raise UnZipLoRAError(f"ZipLoRA steps must be positive, got {steps}")
    if content.plain is None or style.plain is None:
        raise UnZipLoRAError("ZipLoRA merges two ordinary LoRAs: give each source as its exported LoRA")
    torch_device = pick_device(device)
    generator = torch.Generator().manual_seed(seed)
    pipe = base.load()
    pipe.to(torch_device)
    denoiser = base.family.denoiser_of(pipe)
    denoiser.requires_grad_(False)
    layers = inject_ziplora(denoiser, content.plain, style.plain)
    if not layers:
        raise UnZipLoRAError("the two LoRAs update no module of this base model; nothing to merge")
    samplers = [_latent_sampler(s, pipe, resolution, generator) for s in (content, style)]
    loop = ZipLoraLoop(pipe, layers, prompts, samplers, resolution, steps, lr, weight, generator)
    fit(loop, [ProgressBar(progress, "ziplora merge"), *callbacks])
    return merged_lora(layers)
