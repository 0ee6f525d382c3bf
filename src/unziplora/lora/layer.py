"""The two-branch LoRA linear layer of UnZipLoRA (arXiv 2412.04465, Sec. 3).

One frozen projection W gets two low-rank updates, content (B_c A_c) and style (B_s A_s),
each scaled per output column by a learned merger vector m and a hard column mask M:

    y = W x + (m_c * M_c) (.) B_c A_c x_c + (m_s * M_s) (.) B_s A_s x_s

x_c and x_s default to x; the prompt-separated cross-attention processor feeds K/V
projections the content and style prompt embeddings instead (Sec. 3, "Prompt separation").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..branch import Branch, Role
from .columns import CONE_THRESHOLD, columns_per_refresh, cone_score, grow_masks

BRANCHES = (Branch.CONTENT, Branch.STYLE)


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
        self.down = nn.ModuleDict(
            {b.value: nn.Linear(in_features, rank, bias=False, device=device) for b in BRANCHES}
        )
        self.up = nn.ModuleDict(
            {b.value: nn.Linear(rank, out_features, bias=False, device=device) for b in BRANCHES}
        )
        self.merger = nn.ParameterDict(
            {b.value: nn.Parameter(torch.ones(out_features, device=device)) for b in BRANCHES}
        )
        for b in BRANCHES:
            self.register_buffer(f"{b.value}_mask", torch.zeros(out_features, dtype=torch.bool, device=device))
        self.reset_parameters(init, generator)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_parameters(self, init: str, generator: torch.Generator | None = None) -> None:
        """Initialise both branches.

        "gaussian": A and B from N(0, (1/r)^2), as the UnZipLoRA authors' code does (so both
        branches start with a small non-zero update and the first cone scores are informative).
        "zero_b": PEFT's LoRA init (arXiv 2106.09685): A Kaiming-uniform, B = 0.
        """
        with torch.no_grad():
            for b in BRANCHES:
                down, up = self.down[b.value].weight, self.up[b.value].weight
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
    def mask(self, branch: Branch) -> torch.Tensor:
        return getattr(self, f"{branch.value}_mask")

    def unmasked(self, branch: Branch) -> bool:
        """True when M is all ones for this branch now: it trains all columns, or masking is off."""
        return self.roles[branch] is Role.ALL or not self.masking

    def effective_mask(self, branch: Branch) -> torch.Tensor:
        """M for this branch now (see `unmasked`)."""
        if self.unmasked(branch):
            return torch.ones_like(self.mask(branch))
        return self.mask(branch)

    def column_scale(self, branch: Branch) -> torch.Tensor:
        """m * M, the per-column factor of one branch (shape (out,))."""
        if self.unmasked(branch):
            return self.merger[branch.value]  # M is all ones: skip building and multiplying it
        return self.merger[branch.value] * self.mask(branch)

    # ----- the update math -----------------------------------------------------------------
    def delta(self, branch: Branch, x: torch.Tensor) -> torch.Tensor:
        """(m * M) (.) B A x for one branch, computed low-rank (never forms B A)."""
        down, up = self.down[branch.value], self.up[branch.value]
        h = up(down(x.to(down.weight.dtype)))
        return h * self.column_scale(branch).to(h.dtype)

    def get_delta_weight(self, branch: Branch) -> torch.Tensor:
        """The dense update (m * M)[:, None] * (B A), shape (out, in)."""
        return self.folded_up(branch) @ self.down[branch.value].weight

    def folded_up(self, branch: Branch) -> torch.Tensor:
        """B with mask and merger folded into its rows: the up matrix of an ordinary LoRA."""
        return self.column_scale(branch)[:, None] * self.up[branch.value].weight

    def forward(
        self,
        x: torch.Tensor,
        content_input: torch.Tensor | None = None,
        style_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.base(x)
        active = [b for b in BRANCHES if b in self.active]
        if content_input is None and style_input is None and active:
            # One input for every branch: stack them into one LoRA of rank k*r, two matmuls
            # instead of 2k (same sum, fewer kernels; the common case: all but cross-attn K/V).
            down = torch.cat([self.down[b.value].weight for b in active])
            up = torch.cat([self.folded_up(b) for b in active], dim=1)
            return out + F.linear(F.linear(x.to(down.dtype), down), up).to(out.dtype)
        inputs = {Branch.CONTENT: content_input, Branch.STYLE: style_input}
        for branch in active:
            branch_x = inputs[branch] if inputs[branch] is not None else x
            out = out + self.delta(branch, branch_x).to(out.dtype)
        return out

    # ----- column selection -----------------------------------------------------------------
    @torch.no_grad()
    def cone_scores(self, branch: Branch, threshold: float = CONE_THRESHOLD) -> torch.Tensor:
        """Column scores from the last backward pass (arXiv 2412.04465, Sec. 3, "Column separation").

        dW = B A (unscaled) and G = (dB A + B dA) * m per column, from the current .grad
        fields, as in the authors' code. dB already carries one factor m (the forward multiplies
        by m), so G carries m twice; at the first refresh m = 1 and the two readings agree.
        """
        down, up = self.down[branch.value].weight, self.up[branch.value].weight
        if down.grad is None or up.grad is None:
            raise RuntimeError("cone_scores needs gradients: call it right after backward()")
        merger = self.merger[branch.value].float()[:, None]
        delta_weight = up.float() @ down.float()
        delta_grad = (up.grad.float() @ down.float() + up.float() @ down.grad.float()) * merger
        return cone_score(delta_weight, delta_grad, threshold)

    @torch.no_grad()
    def refresh_masks(self, fraction: float, threshold: float = CONE_THRESHOLD) -> None:
        """Grow the hard masks of the masked branches by the top `fraction` of columns each."""
        scores = {
            b: self.cone_scores(b, threshold) if self.roles[b] is Role.MASKED else None for b in BRANCHES
        }
        content, style = grow_masks(
            scores[Branch.CONTENT],
            scores[Branch.STYLE],
            self.mask(Branch.CONTENT),
            self.mask(Branch.STYLE),
            columns_per_refresh(self.out_features, fraction),
        )
        self.mask(Branch.CONTENT).copy_(content)
        self.mask(Branch.STYLE).copy_(style)

    def extra_repr(self) -> str:
        roles = ", ".join(f"{b.value}={self.roles[b].value}" for b in BRANCHES)
        return f"rank={self.rank}, {roles}"
