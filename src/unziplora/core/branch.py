"""The two branches of an UnZipLoRA layer, named once for the whole package."""

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
