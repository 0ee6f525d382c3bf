"""Broken numbers are never silent: LoRA weights are checked as they load, before they reach a model.

A NaN or Inf anywhere in a LoRA makes every generated image black, and a merge of it NaN too;
values beyond MAX_ABS are no trained LoRA's (they overflow fp16 at once). Integer and bool
tensors are read as floats, with a note: no LoRA trainer writes them, so the file is likely not
what the user meant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..errors import UnZipLoRAError

MAX_ABS = 1e4
_EXACT = ("mask",)  # the run's own integer tensors: column masks


def check_weights(state: dict[str, torch.Tensor], source: str | Path, warn: bool = True) -> None:
    """One line naming the first tensor of `source` that is not finite or beyond MAX_ABS; with `warn`,
    one note for its integer or bool tensors. `.alpha` entries must be one number each."""
    cast = []
    for key, value in state.items():
        if key.endswith(".alpha") and value.numel() != 1:
            raise UnZipLoRAError(f"{source}: {key} holds {value.numel()} numbers where an alpha is one number; "
                                 "the LoRA file is damaged: re-create or re-download it")
        if not value.is_floating_point():
            if key.rsplit(".", 1)[-1] not in _EXACT:
                cast.append(key)
            continue
        values = value.float()
        if not torch.isfinite(values).all():
            bad = "NaN" if torch.isnan(values).any() else "Inf"
            raise UnZipLoRAError(f"{source}: {key} holds {bad} values; the LoRA is broken (a diverged training "
                                 "or a damaged file): re-create or re-download it")
        if values.numel() and values.abs().max() > MAX_ABS:
            raise UnZipLoRAError(f"{source}: {key} holds values up to {values.abs().max().item():.3g}, beyond "
                                 f"{MAX_ABS:g}, which no trained LoRA has; re-create or re-download it")
    if cast and warn:
        print(f"warning: {source}: {len(cast)} tensor(s) hold integers or bools (first: {cast[0]}, "
              f"{state[cast[0]].dtype}), not the floats a LoRA holds; read as floats", file=sys.stderr)
