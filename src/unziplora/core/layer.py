"""The two-branch LoRA linear layer of UnZipLoRA (arXiv 2412.04465, Sec. 3).

One frozen projection W gets two low-rank updates, content (B_c A_c) and style (B_s A_s),
each scaled per output column by a learned merger vector m and a hard column mask M:

    y = W x + (m_c * M_c) (.) B_c A_c x_c + (m_s * M_s) (.) B_s A_s x_s

The mergers act only while both branches run (training, combined and cross-run inference);
one branch alone is M (.) B A, as the authors' single-branch forward and export compute it.
x_c and x_s default to x; the prompt-separated cross-attention processor feeds K/V
projections the content and style prompt embeddings instead (Sec. 3, "Prompt separation").

Storage: both branches live in one parameter per kind (A: (2, r, in), B: (out, 2, r),
m: (2, out), M: (2, out)), branch 0 = content, 1 = style; injected into a model, every layer's m is a
slice of one `MergerPool` parameter. Where both branches see one input
the update is then one LoRA of rank 2r, [B_c | B_s] [A_c; A_s] x, with no per-step
concatenation: half the operations and optimiser tensors of two separate LoRAs, which is what
a training step costs on a model of narrow layers (bench speed). `down`, `up`, `merger` and
`mask` give one branch's views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..names import Branch, Role
from .columns import CONE_THRESHOLD, columns_per_refresh, cone_ranking, grow_masks, layer_mean_weights

BRANCHES = (Branch.CONTENT, Branch.STYLE)
INDEX = {Branch.CONTENT: 0, Branch.STYLE: 1}


class TwoBranchLoraLinear(nn.Module):
    """A frozen nn.Linear plus content and style LoRA branches with mergers and column masks.

    `roles` says, per branch, whether it trains all columns (Role.ALL) or only its masked
    columns (Role.MASKED). `masking` switches the hard masks off for the one unmasked step of
    each mask refresh; at inference it stays on.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        roles: dict[Branch, Role],
        init: str = "gaussian",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.rank = rank
        self.roles = dict(roles)
        self.masking = True
        self.active: set[Branch] = set(BRANCHES)
        out_features, in_features = base.out_features, base.in_features
        device = base.weight.device
        self.down_weight = nn.Parameter(torch.empty(2, rank, in_features, device=device))
        self.up_weight = nn.Parameter(torch.empty(out_features, 2, rank, device=device))
        self.merger_weight = nn.Parameter(torch.ones(2, out_features, device=device))
        self._pool_ref: tuple = ()  # (MergerPool, index) once the layer's mergers moved into a pool
        self.register_buffer("masks", torch.zeros(2, out_features, dtype=torch.bool, device=device))
        owns_all = [[self.roles[b] is Role.ALL] for b in BRANCHES]
        self.register_buffer("owns_all", torch.tensor(owns_all, device=device), persistent=False)
        self.any_owns_all = any(row[0] for row in owns_all)
        self._mask_factor: tuple | None = None  # (key, (2, out) float M): the masks change only at a refresh
        self.reset_parameters(init, generator)

    @property
    def mergers(self) -> torch.Tensor:
        """m of both branches, (2, out): the layer's own parameter, or its slice of a MergerPool."""
        if self._pool_ref:
            pool, index = self._pool_ref
            return pool.slice(index)
        return self.merger_weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    # ----- one branch's views ----------------------------------------------------------------
    def down(self, branch: Branch) -> torch.Tensor:
        """A of one branch, (r, in)."""
        return self.down_weight[INDEX[branch]]

    def up(self, branch: Branch) -> torch.Tensor:
        """B of one branch, (out, r)."""
        return self.up_weight[:, INDEX[branch]]

    def merger(self, branch: Branch) -> torch.Tensor:
        """m of one branch, (out,)."""
        return self.mergers[INDEX[branch]]

    def mask(self, branch: Branch) -> torch.Tensor:
        """The hard mask M of one branch as stored (a view: writing into it sets the mask)."""
        return self.masks[INDEX[branch]]

    def grads(self, branch: Branch) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Gradients of (A, B, m) of one branch from the last backward pass (None where absent)."""
        i = INDEX[branch]
        a, b = self.down_weight.grad, self.up_weight.grad
        m = self._pool_ref[0].grad_slice(self._pool_ref[1]) if self._pool_ref else self.merger_weight.grad
        return None if a is None else a[i], None if b is None else b[:, i], None if m is None else m[i]

    def reset_parameters(self, init: str, generator: torch.Generator | None = None) -> None:
        """Initialise both branches.

        "gaussian": A and B from N(0, (1/r)^2), as the UnZipLoRA authors' code does (so both
        branches start with a small non-zero update and the first cone scores are informative).
        "zero_b": PEFT's LoRA init (arXiv 2106.09685): A Kaiming-uniform, B = 0.
        """
        with torch.no_grad():
            for b in BRANCHES:
                down, up = self.down(b), self.up(b)
                if init == "gaussian":
                    down.copy_(torch.randn(down.shape, generator=generator) / self.rank)
                    up.copy_(torch.randn(up.shape, generator=generator) / self.rank)
                elif init == "zero_b":
                    bound = 1.0 / math.sqrt(down.shape[1])  # kaiming_uniform_(a=sqrt(5)) as in nn.Linear
                    down.copy_((torch.rand(down.shape, generator=generator) * 2 - 1) * bound)
                    up.zero_()
                else:
                    raise ValueError(f"unknown LoRA init {init!r}: use 'gaussian' or 'zero_b'")

    # ----- masks and mergers -------------------------------------------------------------
    def unmasked(self, branch: Branch) -> bool:
        """True when M is all ones for this branch now: it trains all columns, or masking is off."""
        return self.roles[branch] is Role.ALL or not self.masking

    def effective_masks(self) -> torch.Tensor:
        """M of both branches now, (2, out) bool: all ones where `unmasked`."""
        if not self.masking:
            return torch.ones_like(self.masks)
        return self.masks | self.owns_all if self.any_owns_all else self.masks

    def effective_mask(self, branch: Branch) -> torch.Tensor:
        return self.effective_masks()[INDEX[branch]]

    def mask_factor(self) -> torch.Tensor:
        """M of both branches as a (2, out) float factor, rebuilt only when the masks or the masking
        switch changed: every forward pass needs it, a refresh changes it every few hundred steps."""
        weight = self.down_weight  # the mergers' dtype and device: every LoRA tensor of the layer shares them
        key = (self.masks._version, self.masks.data_ptr(), self.masking, weight.dtype, weight.device)
        if self._mask_factor is None or self._mask_factor[0] != key:
            self._mask_factor = (key, self.effective_masks().to(weight.dtype))
        return self._mask_factor[1]

    def column_scales(self) -> torch.Tensor:
        """The per-column factors of both branches, (2, out): m * M while both branches run,
        M alone while one runs by itself (the mergers only weigh the two against each other)."""
        if len(self.active) < 2:
            return self.mask_factor()
        if all(self.unmasked(b) for b in BRANCHES):
            return self.mergers  # M is all ones: skip building and multiplying it
        return self.mergers * self.mask_factor()

    def column_scale(self, branch: Branch) -> torch.Tensor:
        return self.column_scales()[INDEX[branch]]

    # ----- the update math -----------------------------------------------------------------
    def folded_ups(self) -> torch.Tensor:
        """[B_c | B_s] with their column factors folded into the rows, (out, 2, r)."""
        return self.up_weight * self.column_scales().t().unsqueeze(-1)

    def masked_up(self, branch: Branch) -> torch.Tensor:
        """M (.) B: the up matrix of the branch alone as an ordinary LoRA (no merger, as the
        authors export it, arXiv 2412.04465 public code `get_unziplora_weight`)."""
        return self.effective_mask(branch).to(self.up_weight.dtype)[:, None] * self.up(branch)

    def get_delta_weight(self, branch: Branch) -> torch.Tensor:
        """The dense update of one branch as the layer applies it now, (out, in):
        (m * M)[:, None] * (B A) beside the other branch, M[:, None] * (B A) alone."""
        return (self.column_scale(branch)[:, None] * self.up(branch)) @ self.down(branch)

    @torch.no_grad()
    def merge_into_base(self) -> nn.Linear:
        """Add the active branches' dense updates to the frozen base weight and return the base
        Linear, to put in this layer's place (PEFT's `merge` followed by unloading)."""
        active = [b for b in BRANCHES if b in self.active]
        if active:
            self.base.weight += sum(self.get_delta_weight(b) for b in active).to(self.base.weight.dtype)
        return self.base

    def forward(
        self,
        x: torch.Tensor,
        content_input: torch.Tensor | None = None,
        style_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.base(x)
        if not self.active:
            return out
        ups = self.folded_ups()
        # Under autocast the matmuls cast their inputs themselves: a copy of x into the LoRA's fp32
        # would be cast straight back to fp16, one wasted kernel each way (a GPU step is launch-bound);
        # .to(None) leaves x as it is.
        dtype = x.dtype if torch.is_autocast_enabled(x.device.type) else ups.dtype
        if content_input is None and style_input is None and len(self.active) == 2:
            # One input for both branches (all but cross-attn K/V): one LoRA of rank 2r.
            h = F.linear(F.linear(x if x.dtype == dtype else x.to(dtype), self.down_weight.flatten(0, 1)), ups.flatten(1))
            return out + (h if h.dtype == out.dtype else h.to(out.dtype))
        inputs = [x if given is None else given for given in (content_input, style_input)]
        if len(self.active) == 2 and inputs[0].shape == inputs[1].shape == x.shape:
            # Separated inputs (cross-attn K/V): both branches in one batched matmul per factor.
            xs = _stacked(inputs[0], inputs[1], dtype)  # (2, tokens, in)
            low = torch.bmm(xs, self.down_weight.transpose(1, 2))  # (2, tokens, r): A_c x_c and A_s x_s
            # [A_c x_c | A_s x_s] through [B_c | B_s]: the sum of both branches in one matmul of rank 2r
            h = F.linear(low.transpose(0, 1).flatten(1), ups.flatten(1))
            return out + h.view(out.shape).to(out.dtype)
        for branch in BRANCHES:
            if branch in self.active:
                i = INDEX[branch]
                h = F.linear(F.linear(inputs[i].to(dtype), self.down_weight[i]), ups[:, i])
                out = out + h.to(out.dtype)
        return out

    def branch_update(self, content_input: torch.Tensor, style_input: torch.Tensor) -> torch.Tensor:
        """The active branches' updates alone (no base), each on its own input:
        sum_b (m_b * M_b) (.) B_b A_b x_b. The update is linear in x, so a caller whose branches differ
        from the shared input on a few tokens only (FLUX's single-stream text slice, core/flux.py) adds
        this on the difference to `forward(x)` instead of running both branches over every token."""
        ups = self.folded_ups()
        dtype = content_input.dtype if torch.is_autocast_enabled(content_input.device.type) else ups.dtype
        out = None
        for branch, x in zip(BRANCHES, (content_input, style_input)):
            if branch in self.active:
                i = INDEX[branch]
                h = F.linear(F.linear(x.to(dtype), self.down_weight[i]), ups[:, i])
                out = h if out is None else out + h
        return torch.zeros(*content_input.shape[:-1], self.out_features, device=content_input.device,
                           dtype=content_input.dtype) if out is None else out.to(content_input.dtype)

    # ----- column selection -----------------------------------------------------------------
    @torch.no_grad()
    def cone_scores(self, branch: Branch, threshold: float = CONE_THRESHOLD, grad_scale: float = 1.0) -> torch.Tensor:
        """Column scores from the last backward pass (arXiv 2412.04465, Sec. 3, "Column separation"):
        the first key of `cone_ranking`, shape (out,)."""
        return self.cone_ranking(branch, threshold, grad_scale)[:, 0]

    @torch.no_grad()
    def cone_ranking(self, branch: Branch, threshold: float = CONE_THRESHOLD, grad_scale: float = 1.0) -> torch.Tensor:
        """(out, 2): the cone score of every column and its tie-break (`columns.cone_ranking`).

        dW = B A (unscaled) and G = (dB A + B dA) * m per column, from the current .grad
        fields, as in the authors' code (`get_unziplora_cone`). dB already carries one factor m
        (the forward multiplies by m), so G carries m twice; at the first refresh m = 1 and the
        two readings agree. `grad_scale` multiplies G: the authors score gradients at their fp16
        loss scale (columns.CONE_LOSS_SCALE); the threshold means what it means there only at
        that scale (on true gradients every score is 0 and the choice becomes an index split).
        """
        down, up = self.down(branch).float(), self.up(branch).float()
        down_grad, up_grad, _ = self.grads(branch)
        if down_grad is None or up_grad is None:
            raise RuntimeError("cone_scores needs gradients: call it right after backward()")
        merger = self.merger(branch).float()[:, None]
        delta_weight = up @ down
        delta_grad = (up_grad.float() @ down + up @ down_grad.float()) * (merger * grad_scale)
        return cone_ranking(delta_weight, delta_grad, threshold)

    @torch.no_grad()
    def refresh_masks(self, fraction: float, threshold: float = CONE_THRESHOLD, grad_scale: float = 1.0) -> list[Branch]:
        """Grow the hard masks of the masked branches by `fraction` of the columns each
        (`columns.grow_masks`); returns the branches whose cone scores all tied (`scores_tie`)."""
        scores = {
            b: self.cone_ranking(b, threshold, grad_scale) if self.roles[b] is Role.MASKED else None for b in BRANCHES
        }
        tied: list[Branch] = []
        content, style = grow_masks(
            scores[Branch.CONTENT],
            scores[Branch.STYLE],
            self.mask(Branch.CONTENT),
            self.mask(Branch.STYLE),
            columns_per_refresh(self.out_features, fraction),
            on_tie=lambda name: tied.append(Branch(name)),
        )
        self.mask(Branch.CONTENT).copy_(content)
        self.mask(Branch.STYLE).copy_(style)
        return tied

    def extra_repr(self) -> str:
        roles = ", ".join(f"{b.value}={self.roles[b].value}" for b in BRANCHES)
        return f"rank={self.rank}, {roles}"


class MergerPool(nn.Module):
    """The merger vectors m_c, m_s of many layers in one (2, columns) parameter, each layer's (2, out)
    block a slice of it (arXiv 2412.04465, Sec. 3, "Column separation": the mergers and L_orth).

    Why: L_orth, the merger-gradient restriction, the [0, 1] clamp, clipping and AdamW then handle
    one tensor instead of one per layer (the embedded model has 88, SDXL 560), which on a model of
    narrow layers is most of what the mergers add to a training step (bench speed). The slices are
    cut once per parameter version (once per optimiser step) and per gradient mode; a layer reads
    its own through `TwoBranchLoraLinear.mergers`. Not a submodule of the denoiser: it stays where
    the layers were made (every caller moves the denoiser before injecting).
    """

    def __init__(self, layers: list[TwoBranchLoraLinear]):
        super().__init__()
        if not layers:
            raise ValueError("MergerPool needs at least one layer")
        self.widths = [layer.out_features for layer in layers]
        self.weight = nn.Parameter(torch.cat([layer.mergers.detach() for layer in layers], dim=1))
        # L_orth's per-column weights, 1 / (layers * width): its mean over layers of each layer's mean
        self.register_buffer("mean_weights", layer_mean_weights(self.widths, self.weight.device, self.weight.dtype),
                             persistent=False)
        self._slices: tuple = (None, ())
        for index, layer in enumerate(layers):
            layer._parameters.pop("merger_weight", None)
            layer._pool_ref = (self, index)

    def __getstate__(self):  # a copy (deepcopy of the denoiser) cuts its own slices
        return {**self.__dict__, "_slices": (None, ())}

    def slice(self, index: int) -> torch.Tensor:
        """The (2, out) mergers of layer `index`, a view of the pooled parameter."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.requires_grad and torch.is_grad_enabled())
        if self._slices[0] != key:
            self._slices = (key, w.split(self.widths, dim=1))
        return self._slices[1][index]

    def grad_slice(self, index: int) -> torch.Tensor | None:
        grad = self.weight.grad
        return None if grad is None else grad.split(self.widths, dim=1)[index]


# The last stacked (p_c, p_s) pair: every cross-attention K and V projection of a forward pass gets the
# same two text embeddings, so they are stacked once per pass instead of once per projection (SDXL: 140).
_last_stacked: tuple = ()


def _stacked(content: torch.Tensor, style: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch.stack([content, style]).to(dtype).flatten(1, -2), reused while the same two tensors come back
    unchanged (same objects, same in-place version). Inputs that need a gradient are stacked afresh:
    a graph node is not reused across passes."""
    global _last_stacked
    reusable = not (content.requires_grad or style.requires_grad)
    key = (content._version, style._version, dtype)
    last = _last_stacked
    if reusable and last and last[0] is content and last[1] is style and last[2] == key:
        return last[3]
    stacked = torch.stack([content, style]).to(dtype).flatten(1, -2)
    if reusable:
        _last_stacked = (content, style, key, stacked)
    return stacked
