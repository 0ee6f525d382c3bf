"""The one training image: loading, resize-and-crop, SDXL time ids, cached latents.

Crop policy (the UnZipLoRA authors' script, arXiv 2412.04465): resize so the SHORTER side equals
the resolution, then take a random square crop of the longer side each step. SDXL's micro-
conditioning (original size, crop top-left, target size; arXiv 2307.01952, Sec. 2.2) gets the
fixed ids generation uses, (res, res, 0, 0, res, res), whatever the input's size and crop, as
the authors (and B-LoRA's and ZipLoRA's reference scripts) train.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import UnZipLoRAError
from .image_file import check_image_file

MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 8192 * 8192  # decompression-bomb guard
# Training resizes the SHORTER side to the resolution: a long thin strip becomes a huge image
# (8 x 2,000,000 px at 1024 px is 256 billion pixels). No picture is longer than this per width.
MAX_ASPECT = 16


def load_image(source) -> Image.Image:
    """An RGB image from a path or a PIL image; odd-but-valid files are normalised, not refused.

    EXIF orientation is applied; transparency is composited on white; palette, grayscale,
    CMYK and 16-bit images are converted to 8-bit RGB; animations give their first frame.
    Anything else (missing, a folder, empty, not an image, truncated, too small, too large)
    is one UnZipLoRAError naming the problem and the fix.
    """
    if isinstance(source, Image.Image):
        image, name = source, "the image"
    else:
        path = Path(source)
        check_image_file(path)
        image, name = _open(path), f"image {path}"
    try:
        image = _to_rgb(ImageOps.exif_transpose(image))
    except UnZipLoRAError:
        raise
    except Exception as exc:  # any decoder failure means the file is unusable
        raise UnZipLoRAError(f"{name} could not be decoded ({exc}); re-export it as PNG or JPEG") from None
    _check_aspect(image.size, name)
    if min(image.size) < MIN_IMAGE_SIDE:
        raise UnZipLoRAError(
            f"{name} is {image.size[0]}x{image.size[1]} px; the smallest side must be at least {MIN_IMAGE_SIDE} px "
            "(upscale it first)"
        )
    return image


def _check_aspect(size: tuple[int, int], name: str) -> None:
    width, height = size
    if min(width, height) >= MIN_IMAGE_SIDE and max(width, height) > MAX_ASPECT * min(width, height):
        raise UnZipLoRAError(f"{name} is {width}x{height} px, more than {MAX_ASPECT} times as long as it is wide; "
                             "training scales its shorter side to the resolution, which would make it huge: "
                             "crop it to the part to learn from")


def _open(path: Path) -> Image.Image:
    """Decode the first frame, refusing huge images from their header before any pixel is allocated."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # PIL warns between 1x and 2x its limit; we refuse instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height}")
        _check_aspect(image.size, f"image {path}")  # from the header, before any pixel is decoded
        image.seek(0)
        image.load()
        return image
    except Image.DecompressionBombError:
        raise UnZipLoRAError(
            f"image {path} is too large (over {MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        ) from None
    except Exception as exc:  # PIL plugins raise many types (OSError, SyntaxError, struct.error, ...)
        raise UnZipLoRAError(f"{path} is not a readable image ({exc}); re-export it as PNG or JPEG") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # In PIL, 4 bytes a pixel at most: a float64 copy (and its temporaries) of a 16-bit image
        # took 30 bytes a pixel (2 GB for a 143 KB file).
        image = image.convert("I")
        peak = 65535.0 if image.getextrema()[1] > 255 else 255.0
        image = image.point(lambda v: v * (255.0 / peak)).convert("L")
    if image.mode == "F":  # 32-bit float (TIFF): scale its own range to 8 bits
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        span = float(array.max() - array.min()) or 1.0
        image = Image.fromarray(((array - array.min()) / span * 255.0).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def centre_crop(image: Image.Image, resolution: int) -> Image.Image:
    """The middle square of what training crops from: the image resized (shorter side =
    resolution), then a resolution x resolution window at the centre."""
    resized = resize_shorter_side(image, resolution)
    left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def crop_note(image: Image.Image, resolution: int) -> str | None:
    """One line saying how the image is fitted to the training size, or None when it is that size."""
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return None
    scaled = resize_shorter_side(image, resolution).size
    crop = f"each step trains on a random {resolution}x{resolution} crop along the longer side"
    if scaled == (width, height):  # its shorter side is the size already: cropped, not resized
        return f"{crop} of the {width}x{height} image (--resolution sets the size)"
    what = f"resized from {width}x{height} to {scaled[0]}x{scaled[1]}"
    if scaled != (resolution, resolution):
        what += f"; {crop}"
    return f"the image is {what} (--resolution sets the size)"


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class CroppedLatents:
    """Random square crops of the resized image, each encoded by the VAE once and cached.

    The cache keeps the latent distribution (mean, std) per crop, so a fresh latent sample is
    drawn every step as diffusers' training scripts do, without re-running the encoder.
    """

    def __init__(self, image: Image.Image, resolution: int, vae, device: torch.device):
        self.resolution = resolution
        self.pixels = to_tensor(resize_shorter_side(image, resolution))
        self.vae = vae
        self.device = device
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def crop_offsets(self, generator: torch.Generator) -> tuple[int, int]:
        _, height, width = self.pixels.shape
        top = int(torch.randint(0, height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.resolution + 1, (1,), generator=generator))
        return top, left

    @torch.no_grad()
    def _encode(self, top: int, left: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.pixels[:, top : top + self.resolution, left : left + self.resolution]
        dist = self.vae.encode(crop[None].to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
        """One scaled latent (1, C, h, w) of a random crop, and the crop's top-left corner."""
        top, left = self.crop_offsets(generator)
        if (top, left) not in self._cache:
            self._cache[(top, left)] = self._encode(top, left)
        mean, std = self._cache[(top, left)]
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        latent = mean + std * noise
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latent - shift) * config.scaling_factor, (top, left)

    @property
    def cached_crops(self) -> int:
        return len(self._cache)
