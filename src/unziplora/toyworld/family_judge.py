"""A learned judge of the fill family: the quality ruler for the base model's samples.

The analytic ``classify_style`` (style_oracle.py) fits each family as a template on the image's
own mask; it names 99.6 % of clean renders' families but loses hard edges under a decoder's
blur (87.9 % right at a 0.8 px blur, 71.1 % at 1.2 px). This judge is the learned option: a small convolutional
classifier trained on the renderer's endless data, with the subject's class, the palette and
the family's angle and offset all random, and with the degradations a decoder brings (blur,
lower contrast, pixel noise) as augmentation. It never sees a generated image: what it learns
is the world's definition of a family, not a model's habits.

The weights ship as ``assets/family_judge.safetensors`` (fp16, 0.21 M parameters) with their
recipe in the file's metadata; ``python -m recipes.toyworld_model.family_judge`` (outside the
package) retrains them (about 15 minutes on 2 CPU cores) and prints the validation table.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .oracles import _as_array, _segment
from .world import FAMILIES

JUDGE_FILE = Path(__file__).resolve().parent.parent / "assets" / "family_judge.safetensors"
WIDTHS = (16, 32, 64, 96)  # channels per resolution: 64, 32, 16, 8 px


class FamilyJudgeNet(nn.Module):
    """Two 3x3 convolutions per resolution, stride-2 downsampling, then global mean and max pooling
    (translation invariant: where the subject stands is content) and one linear layer."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, n_families: int = len(FAMILIES)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1), nn.BatchNorm2d(c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, n_families)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def prepare(images) -> torch.Tensor:
    """Images (PIL or HxWx3 arrays, any size) -> (N, 3, 64, 64): the colour difference from the
    background (the median border colour, as the oracles segment), in units of 127.5."""
    out = []
    for img in images:
        x = _as_array(img)
        bg, _ = _segment(x)
        out.append((x - bg) / 127.5)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


def load(path: Path = JUDGE_FILE) -> FamilyJudgeNet:
    """A judge from its safetensors file (no pickle), in eval mode, float32."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..errors import UnZipLoRAError

    path = Path(path)
    if not path.is_file():
        raise UnZipLoRAError(f"no family judge at {path}: run python -m recipes.toyworld_model.family_judge to train one")
    try:
        with safe_open(str(path), "pt") as f:
            recipe = json.loads((f.metadata() or {})["recipe"])
        state = load_file(str(path))
    except Exception as error:  # a file that is no safetensors judge: one line, not a traceback
        raise UnZipLoRAError(f"{path} is not a family judge file ({error}); retrain it with "
                             "python -m recipes.toyworld_model.family_judge") from None
    if recipe.get("families") != list(FAMILIES):
        raise UnZipLoRAError(f"{path} judges families {recipe.get('families')}, the world has {list(FAMILIES)}: "
                             "retrain it with python -m recipes.toyworld_model.family_judge")
    net = FamilyJudgeNet(tuple(recipe["widths"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.eval()


@lru_cache(maxsize=1)
def _shipped_judge() -> FamilyJudgeNet:
    return load(JUDGE_FILE)


@torch.no_grad()
def judge_families(images, net: FamilyJudgeNet | None = None, batch: int = 256) -> list[str]:
    """The family each image shows, by the shipped judge (or `net`)."""
    net = net if net is not None else _shipped_judge()
    images = list(images)
    names = []
    for i in range(0, len(images), batch):
        logits = net(prepare(images[i:i + batch]))
        names += [FAMILIES[k] for k in logits.argmax(dim=1).tolist()]
    return names


def judge_family(img) -> str:
    """The fill family of one image (see judge_families)."""
    return judge_families([img])[0]
