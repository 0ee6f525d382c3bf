"""The decomposition methods a user can pick, named once for the whole package.

UnZipLoRA (arXiv 2412.04465) and its ablations M1 / M2 (its ablation study; docs/method.md §9)
train two branches together (`decompose.py`); the baselines train one ordinary LoRA
(`methods/baselines.py`): DreamBooth-LoRA (arXiv 2208.12242 with LoRA, arXiv 2106.09685) and
B-LoRA (arXiv 2403.14572). `decompose.decompose(..., method=...)` runs any of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceSettings:
    """The training settings of a baseline's reference code (the method layer of `defaults.py`)."""

    source: str
    rank: int
    lr: float
    steps: int

    def overrides(self) -> dict[str, object]:
        return {"lora.rank": self.rank, "lora.lr": self.lr, "train.steps": self.steps}


# yardenfren1996/B-LoRA's README command (the paper's settings): --rank=64 --learning_rate=5e-5
# --max_train_steps=1000, batch 1, constant LR.
B_LORA_REFERENCE = ReferenceSettings("yardenfren1996/B-LoRA (arXiv 2403.14572)", rank=64, lr=5e-5, steps=1000)


class Method(str, enum.Enum):
    UNZIPLORA = "unziplora"
    UNZIPLORA_M1 = "unziplora-m1"  # prompt separation only
    UNZIPLORA_M2 = "unziplora-m2"  # + column separation, no block separation
    DREAMBOOTH_LORA = "dreambooth-lora"
    B_LORA = "b-lora"

    @property
    def is_baseline(self) -> bool:
        """True for the methods that train one ordinary LoRA instead of two branches."""
        return self in (Method.DREAMBOOTH_LORA, Method.B_LORA)

    @property
    def reference(self) -> ReferenceSettings | None:
        """The reference code's settings a baseline trains with unless the user sets others."""
        return B_LORA_REFERENCE if self is Method.B_LORA else None

    @property
    def reference_settings(self) -> dict[str, object]:
        return self.reference.overrides() if self.reference else {}

    @property
    def config_overrides(self) -> dict[str, object]:
        """The config an ablation changes (dotted keys, `RunConfig.with_overrides`)."""
        return {
            Method.UNZIPLORA_M1: {"masks.enabled": False},
            Method.UNZIPLORA_M2: {"model.block_separation": False},
        }.get(self, {})


MERGE_METHODS = ("direct", "ziplora")  # methods/merge.py: exact sum; ZipLoRA's learned mergers


def method_names() -> list[str]:
    """Every method's name, for command-line choices."""
    return [m.value for m in Method]
