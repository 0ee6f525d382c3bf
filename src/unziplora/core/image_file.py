"""Checking an image path before anything heavy loads (the CLI's argument checks call it first)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UnZipLoRAError


def check_image_file(path: str | Path) -> None:
    """One clear error for a path that cannot be an image: missing, a folder, or empty."""
    path = Path(path)
    if not path.exists():
        raise UnZipLoRAError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise UnZipLoRAError(f"{path} is a folder; give one image file (PNG, JPEG, WebP, ...)")
    if path.stat().st_size == 0:
        raise UnZipLoRAError(f"image {path} is an empty file (0 bytes); give a real image")
