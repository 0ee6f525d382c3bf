"""The embedded toy-world base model shipped in the package, and the demo's held-out image."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "toyworld-sdxl"
DEMO_INDEX = 10  # held-out combo: a triangle in bands style (teal and lime bands on magenta: palette and structure at a glance)


def demo_image(index: int = DEMO_INDEX):
    """The index-th bundled held-out image: (subject, style, PIL image)."""
    from ..toyworld import heldout_images

    return heldout_images(index + 1, 64)[index]  # deterministic: the same image on every machine
