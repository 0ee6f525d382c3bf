"""Putting two-branch LoRA layers into a diffusers UNet (FLUX's transformer: flux.py), and taking their state out again.

Every attention projection (to_q, to_k, to_v, to_out.0 of attn1 and attn2) of every
transformer block gets a TwoBranchLoraLinear (arXiv 2412.04465, Sec. 3; docs/method.md §2); every such attention module gets
the prompt-separated processor (attention.py). The UNet's own code is not touched: both hooks
are public diffusers extension points (module attributes and Attention.set_processor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from .attention import SeparatedAttnProcessor
from ..names import Branch, Role
from ..errors import UnZipLoRAError
from ..models.profiles import Profile
from .columns import orthogonality_loss
from .layer import BRANCHES, MergerPool, TwoBranchLoraLinear

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def attention_modules(unet: nn.Module) -> Iterator[tuple[str, Attention]]:
    """The attention modules of the UNet's transformer blocks (attn1 and attn2); FLUX: every block's attn."""
    if is_mmdit(unet):
        for kind in ("transformer_blocks", "single_transformer_blocks"):
            for i, block in enumerate(getattr(unet, kind)):
                yield f"{kind}.{i}.attn", block.attn
        return
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.rsplit(".", 1)[-1] in ("attn1", "attn2"):
            yield name, module


def projection_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, linear) of every projection UnZipLoRA puts a two-branch layer on (FLUX: flux.py's)."""
    if is_mmdit(model):
        from .flux import flux_projections

        yield from flux_projections(model)
        return
    for name, attn in attention_modules(model):
        for projection in PROJECTIONS:
            yield f"{name}.{projection}", _get(attn, projection)


def is_mmdit(model: nn.Module) -> bool:
    """A FLUX-style transformer (double- and single-stream blocks) rather than a UNet."""
    return hasattr(model, "transformer_blocks") and hasattr(model, "single_transformer_blocks")


def _get(attn: Attention, projection: str) -> nn.Module:
    return attn.to_out[0] if projection == "to_out.0" else getattr(attn, projection)


def _set(attn: Attention, projection: str, layer: nn.Module) -> None:
    if projection == "to_out.0":
        attn.to_out[0] = layer
    else:
        setattr(attn, projection, layer)


def wrap_projections(attn, name: str, projections, roles, rank: int, init: str, generator, owner: str) -> dict:
    """Replace each of `attn`'s `projections` by a TwoBranchLoraLinear around it; {"name.projection": layer}.
    `owner` names the model in the error for a module that already has them ("UNet", "transformer")."""
    layers = {}
    for projection in projections:
        base = _get(attn, projection)
        if isinstance(base, TwoBranchLoraLinear):
            raise UnZipLoRAError(f"{name}.{projection} already has UnZipLoRA layers; load a fresh {owner}")
        layer = TwoBranchLoraLinear(base, rank, roles, init, generator)
        _set(attn, projection, layer)
        layers[f"{name}.{projection}"] = layer
    return layers


@dataclass
class TwoBranchLoRA:
    """Handle on the injected layers of one UNet, keyed by their module name (without 'unet.')."""

    layers: dict[str, TwoBranchLoraLinear]
    rank: int
    # The masks change only at a refresh (or a load): what is derived from them is kept until they do.
    _mask_cache: dict = field(default_factory=dict, repr=False)
    pool: MergerPool | None = field(default=None, repr=False)  # every layer's mergers, one parameter

    def __post_init__(self):
        if self.pool is None and self.layers:
            self.pool = MergerPool(list(self.layers.values()))

    # ----- training-time switches ---------------------------------------------------------
    def set_masking(self, on: bool) -> None:
        for layer in self.layers.values():
            layer.masking = on

    def set_active(self, branches: set[Branch]) -> None:
        for layer in self.layers.values():
            layer.active = set(branches)

    def lora_parameters(self) -> list[nn.Parameter]:
        """A and B of both branches, every layer (one tensor per kind and layer)."""
        return [p for layer in self.layers.values() for p in (layer.down_weight, layer.up_weight)]

    def merger_parameters(self) -> list[nn.Parameter]:
        """m_c and m_s of every layer: one (2, columns) parameter, the layers' blocks end to end (MergerPool)."""
        return [self.pool.weight]

    def set_mergers_trainable(self, on: bool) -> None:
        self.pool.weight.requires_grad_(on)

    def orthogonality_loss(self) -> torch.Tensor:
        """L_orth over every layer (arXiv 2412.04465, Sec. 3; `columns.orthogonality_loss`)."""
        pool = self.pool
        content, style = pool.weight * self._flat_masks().to(pool.weight.dtype)
        return orthogonality_loss(content, style, pool.widths, pool.mean_weights)

    def _flat_masks(self) -> torch.Tensor:
        """Both branches' effective masks of every layer, laid end to end as the pooled mergers: (2, columns)."""
        return self._from_masks("flat", lambda: torch.cat([l.effective_masks() for l in self.layers.values()], dim=1))

    def _from_masks(self, name: str, compute):
        """compute(), reused while no mask changed in place and no layer switched masking."""
        # _buffers: nn.Module's attribute lookup would cost ~2 µs a layer, twice a step
        key = tuple((m.data_ptr(), m._version, layer.masking)
                    for layer in self.layers.values() for m in (layer._buffers["masks"],))
        if self._mask_cache.get("key") != key:
            self._mask_cache.clear()
            self._mask_cache["key"] = key
        if name not in self._mask_cache:
            self._mask_cache[name] = compute()
        return self._mask_cache[name]

    def refresh_masks(self, fraction: float, threshold: float, grad_scale: float = 1.0) -> list[str]:
        """Grow every layer's masks from the last backward pass (`TwoBranchLoraLinear.refresh_masks`).

        Returns "<layer> (<branch>)" for each branch whose scores all tied, so its columns were
        picked by index instead of importance: the caller warns about those."""
        tied = []
        for name, layer in self.layers.items():
            tied += [f"{name} ({branch.value})" for branch in layer.refresh_masks(fraction, threshold, grad_scale)]
        return tied

    @torch.no_grad()
    def restrict_merger_grads(self) -> None:
        """Mergers learn only on columns both effective masks hold (arXiv 2412.04465, Sec. 3; the
        authors' `set_gradient_mask`): in a block-separated layer the masked branch's columns,
        in a layer where both are masked their overlap. All layers at once: one multiply."""
        grad = self.pool.weight.grad
        if grad is None:
            return

        def shared():
            content, style = self._flat_masks()
            return (content & style).to(grad.dtype).expand(2, -1)

        grad.mul_(self._from_masks(f"shared {grad.dtype}", shared))

    @torch.no_grad()
    def clamp_mergers(self) -> None:
        """Keep m in [0, 1] after every optimiser step (arXiv 2412.04465, Sec. 3, "Column
        separation"); all layers at once, one kernel."""
        self.pool.weight.clamp_(0.0, 1.0)

    def mask_fraction(self, branch: Branch) -> float:
        """Share of columns a branch holds, over its masked layers only."""
        held = total = 0
        for layer in self.layers.values():
            if layer.roles[branch] is Role.MASKED:
                held += int(layer.mask(branch).sum())
                total += layer.out_features
        return held / total if total else 1.0

    def target_modules(self) -> list[str]:
        """The projection names the layers sit on, first seen first (PEFT's target_modules)."""
        names = [name.split(".attn")[-1].split(".", 1)[1] for name in self.layers]
        return list(dict.fromkeys(names))

    # ----- state in and out -----------------------------------------------------------------
    def state_dict(self, raw: bool = False) -> dict[str, torch.Tensor]:
        """Everything combined inference needs: A, B, m and M of both branches, per layer.

        M is saved as used at inference: all ones where the profile gives a branch all columns,
        so a reader needs no profile. `raw=True` keeps the training masks as they are (for
        checkpoints: an all-columns branch's mask must stay empty to grow the same way).
        """
        state = {}
        for name, layer in self.layers.items():
            for b in BRANCHES:
                state[f"{name}.{b.value}.lora_A"] = _saved(layer.down(b))
                state[f"{name}.{b.value}.lora_B"] = _saved(layer.up(b))
                state[f"{name}.{b.value}.merger"] = _saved(layer.merger(b))
                mask = layer.mask(b) if raw else layer.mask(b) | (layer.roles[b] is Role.ALL)
                state[f"{name}.{b.value}.mask"] = mask.detach().to(torch.uint8).cpu().contiguous()
        return state

    def load_branch(self, state: dict[str, torch.Tensor], branch: Branch, source: str = "state") -> None:
        """Load one branch from a state_dict() made on a UNet of the same architecture."""
        for name, layer in self.layers.items():
            prefix = f"{name}.{branch.value}"
            try:
                tensors = {k: state[f"{prefix}.{k}"] for k in ("lora_A", "lora_B", "merger", "mask")}
            except KeyError:
                raise UnZipLoRAError(
                    f"{source} has no {branch.value} weights for {name}: it was made for another base model"
                ) from None
            expected = {
                "lora_A": layer.down(branch).shape,
                "lora_B": layer.up(branch).shape,
                "merger": layer.merger(branch).shape,
                "mask": layer.mask(branch).shape,
            }
            for key, shape in expected.items():
                if tensors[key].shape != shape:
                    raise UnZipLoRAError(
                        f"{source}: {prefix}.{key} has shape {tuple(tensors[key].shape)}, this base model needs "
                        f"{tuple(shape)}; use the base model the run was trained on"
                    )
            with torch.no_grad():
                layer.down(branch).copy_(tensors["lora_A"])
                layer.up(branch).copy_(tensors["lora_B"])
                layer.merger(branch).copy_(tensors["merger"])
                layer.mask(branch).copy_(tensors["mask"].bool())

    def ordinary_lora(self, branch: Branch) -> dict[str, torch.Tensor]:
        """One branch alone as an ordinary LoRA (PEFT key names): A and M (.) B per layer.

        As the authors export it: the hard mask is folded into B, the mergers are not (they
        weigh the branches against each other and act only in combined and cross-run inference,
        from the full state). Where L_orth has driven m_c and m_s down on shared columns,
        folding them in would erase those columns from each single LoRA.
        """
        state = {}
        for name, layer in self.layers.items():
            with torch.no_grad():
                state[f"{name}.lora_A.weight"] = _saved(layer.down(branch))
                state[f"{name}.lora_B.weight"] = _saved(layer.masked_up(branch))
        return state


def _saved(tensor: torch.Tensor) -> torch.Tensor:
    """A standalone fp32 CPU copy (a branch's view shares storage with the other branch)."""
    return tensor.detach().float().cpu().clone(memory_format=torch.contiguous_format)


def inject_two_branch_lora(
    unet: nn.Module,
    profile: Profile,
    rank: int,
    init: str = "gaussian",
    seed: int = 0,
) -> TwoBranchLoRA:
    """Wrap every attention projection of the UNet and install the separated processor.

    Roles per attention module come from the base model's profile (profiles/). LoRA
    weights are fp32 and live on the UNet's device; the frozen base stays as it is.
    """
    if is_mmdit(unet):  # FLUX.1: joint-attention blocks, text streams carried beside (flux.py)
        from .flux import inject_flux

        return inject_flux(unet, profile, rank, init, seed)
    modules = list(attention_modules(unet))
    if not modules:
        raise UnZipLoRAError("this UNet has no transformer attention modules; is it an SDXL-shaped UNet?")
    profile.check_against([name for name, _ in modules])
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, TwoBranchLoraLinear] = {}
    for name, attn in modules:
        layers.update(wrap_projections(attn, name, PROJECTIONS, profile.roles_for(name), rank, init, generator, "UNet"))
        attn.set_processor(SeparatedAttnProcessor())
    return TwoBranchLoRA(layers, rank)


def remove_two_branch_lora(unet: nn.Module) -> None:
    """Put the plain projections and the stock processor back (undo inject_two_branch_lora)."""
    if is_mmdit(unet):
        from .flux import remove_flux

        return remove_flux(unet)
    for _, attn in attention_modules(unet):
        for projection in PROJECTIONS:
            layer = _get(attn, projection)
            if isinstance(layer, TwoBranchLoraLinear):
                _set(attn, projection, layer.base)
        attn.set_processor(AttnProcessor2_0())
