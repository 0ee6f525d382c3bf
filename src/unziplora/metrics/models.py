"""Feature extractors of the paper's metrics (arXiv 2412.04465, Sec. 4, "Evaluation"), each loaded from a local path or hub id.

- CLIP (ViT-B/32 by default): image embeddings for CLIP-I, text embeddings for CLIP-T.
- DINO (ViT-S/16): the CLS token of the last layer.
- CSD (arXiv 2404.01292): a CLIP ViT-L/14 vision backbone with two linear heads, style and
  content. We read it as a folder holding a transformers `CLIPVisionModel` and
  `csd_heads.safetensors` (`style.weight`, `content.weight`); the authors publish a pickled
  `.pth`, which unziplora never loads: convert it once in a trusted environment.
Scores are pure functions over features (scores.py). Nothing is downloaded here: a missing
model is one clear error line.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnZipLoRAError
from ..run.folder import load_safetensors
from . import DEFAULTS

CSD_HEADS = "csd_heads.safetensors"


def _load(loader, source: str, what: str):
    from ..models.loading import quiet_libraries

    try:
        with quiet_libraries():
            return loader(source)
    except (OSError, ValueError) as exc:
        raise UnZipLoRAError(
            f"could not load the {what} model from {source!r} ({str(exc).splitlines()[0][:100]}); "
            f"download it where there is network and pass its folder (--{what} PATH)"
        ) from None


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output (projected features in pooler_output); 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEncoder(nn.Module):
    """CLIP image and text embeddings, L2-normalised."""

    def __init__(self, source: str = DEFAULTS["clip"]):
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor

        self.model = _load(lambda s: CLIPModel.from_pretrained(s, use_safetensors=True), source, "clip").eval()
        self.processor = _load(CLIPProcessor.from_pretrained, source, "clip")

    @torch.no_grad()
    def images(self, images) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return F.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)


class DinoEncoder(nn.Module):
    """DINO ViT CLS token of the last layer, L2-normalised."""

    def __init__(self, source: str = DEFAULTS["dino"]):
        super().__init__()
        from transformers import AutoImageProcessor, ViTModel

        self.model = _load(lambda s: ViTModel.from_pretrained(s, use_safetensors=True, add_pooling_layer=False),
                           source, "dino").eval()
        self.processor = _load(AutoImageProcessor.from_pretrained, source, "dino")

    @torch.no_grad()
    def images(self, images) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return F.normalize(self.model(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)


class CsdEncoder(nn.Module):
    """CSD style and content embeddings: CLIP vision features through two linear heads."""

    def __init__(self, source: str = DEFAULTS["csd"]):
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPVisionModel

        folder = Path(source)
        if not (folder / CSD_HEADS).is_file():
            raise UnZipLoRAError(
                f"no CSD model at {source!r} (expected a CLIPVisionModel folder with {CSD_HEADS}); "
                "convert the CSD checkpoint once and pass --csd PATH"
            )
        self.backbone = _load(lambda s: CLIPVisionModel.from_pretrained(s, use_safetensors=True), source, "csd").eval()
        self.processor = _load(CLIPImageProcessor.from_pretrained, source, "csd")
        heads = load_safetensors(folder / CSD_HEADS)
        self.style_head, self.content_head = heads["style.weight"], heads["content.weight"]

    @torch.no_grad()
    def images(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(style, content) embeddings, each L2-normalised."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = self.backbone(pixel_values=pixels).pooler_output
        return (F.normalize(features @ self.style_head.T, dim=-1), F.normalize(features @ self.content_head.T, dim=-1))
