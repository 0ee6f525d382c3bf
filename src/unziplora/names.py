"""The names used everywhere, once: branches, their roles, generation modes, methods, merge methods."""

from __future__ import annotations

import enum


class Branch(str, enum.Enum):
    """Content (the subject) or style (the look): UnZipLoRA, arXiv 2412.04465, Sec. 3."""

    CONTENT = "content"
    STYLE = "style"

    @property
    def other(self) -> "Branch":
        return Branch.STYLE if self is Branch.CONTENT else Branch.CONTENT


class Role(str, enum.Enum):
    """How one branch trains inside one attention module (arXiv 2412.04465, Sec. 3, "Block separation").

    MASKED: only the columns its hard mask selects train (column separation).
    ALL: every column trains, no mask (the module belongs to this branch, following B-LoRA).
    """

    MASKED = "masked"
    ALL = "all"


class Mode(str, enum.Enum):
    """What a generation uses: one branch alone, both of one run, or A's content with B's style."""

    CONTENT = "content"
    STYLE = "style"
    BOTH = "both"
    CROSS = "cross"


class Method(str, enum.Enum):
    """The decomposition methods a user can pick; each is implemented once in methods/ (its plugin)."""

    UNZIPLORA = "unziplora"
    UNZIPLORA_M1 = "unziplora-m1"  # ablation: prompt separation only
    UNZIPLORA_M2 = "unziplora-m2"  # ablation: + column separation, no block separation
    DREAMBOOTH_LORA = "dreambooth-lora"
    B_LORA = "b-lora"
    INSPIRATION_TREE = "inspiration-tree"  # two textual-inversion tokens (arXiv 2305.18203)


class MergeMethod(str, enum.Enum):
    """How `unziplora merge` makes one ordinary LoRA of a content and a style LoRA."""

    DIRECT = "direct"  # the exact sum of the two updates
    ZIPLORA = "ziplora"  # learned per-column mergers (arXiv 2311.13600)


def choice_error(kind: str, value, enum_type) -> str:
    """The one line for a name that is not a member: what was given and what exists."""
    return f"unknown {kind} {value!r}; use one of {', '.join(m.value for m in enum_type)}"
