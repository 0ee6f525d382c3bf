"""Measuring a base model's block roles with B-LoRA's probe (arXiv 2403.14572, Sec. 4).

Which attention modules carry content and which carry style is an empirical property of a
base model (METHOD §2.4). The probe: train one ordinary LoRA on an image with the prompt
"A <identifier>", keep only ONE module group's part, generate, and ask the world's oracles
whether the subject or the style came back, relative to the base model with no LoRA. Groups
whose part brings back mostly the subject get content "all"; mostly the style, style "all".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..config import SampleConfig
from ..generate import Conditioning, sample_images
from ..lora.inject import attention_modules
from ..methods.single_lora import SingleLoraSpec, keep_modules, train_single_lora
from ..prompts import encode_prompts
from .oracles import content_similarity, style_similarity


def module_groups(unet) -> list[str]:
    """Attention groups (e.g. up_blocks.0.attentions.1): the unit B-LoRA assigns roles to."""
    groups = []
    for name, _ in attention_modules(unet):
        group = name.split(".transformer_blocks.")[0]
        if group not in groups:
            groups.append(group)
    return groups


@dataclass
class GroupScore:
    group: str
    content_gain: float  # mean content similarity to the input, minus the no-LoRA floor
    style_gain: float


def _scores(images, reference) -> tuple[float, float]:
    content = np.mean([content_similarity(img, reference) for img in images])
    style = np.mean([style_similarity(img, reference) for img in images])
    return float(content), float(style)


def probe_image(pipe, image, identifier: str, spec: SingleLoraSpec, sample: SampleConfig) -> list[GroupScore]:
    """Gains of every module group for one image (pipe is left without adapters)."""
    device = pipe.unet.device
    prompt = f"A {identifier}"
    embeds, pooled = encode_prompts(pipe, [prompt], device)
    cond = Conditioning(embeds, pooled)
    floor_c, floor_s = _scores(sample_images(pipe, cond, sample, spec.resolution), image)
    state = train_single_lora(pipe, image, spec, device)
    scores = []
    for group in module_groups(pipe.unet):
        part = {f"unet.{k}": v for k, v in keep_modules(state, (group,)).items()}
        pipe.load_lora_weights(copy.copy(part), adapter_name="probe")
        c, s = _scores(sample_images(pipe, cond, sample, spec.resolution), image)
        pipe.delete_adapters("probe")
        scores.append(GroupScore(group, c - floor_c, s - floor_s))
    return scores


def assign_roles(mean_scores: list[GroupScore], margin: float = 0.25, min_gain: float = 0.05) -> dict[str, str]:
    """'content' / 'style' / 'both' per group from gains normalised by the best group of each kind.

    A group is content's when its normalised content gain beats its normalised style gain by
    `margin` and is at least half of the best; style's likewise; otherwise both stay masked.
    A kind whose best gain is below `min_gain` is normalised by `min_gain` instead: gains at
    the level of the oracles' noise must not be stretched into a role.
    """
    best_c = max(max(s.content_gain for s in mean_scores), min_gain)
    best_s = max(max(s.style_gain for s in mean_scores), min_gain)
    roles = {}
    for s in mean_scores:
        c, st = s.content_gain / best_c, s.style_gain / best_s
        if c - st > margin and c >= 0.5:
            roles[s.group] = "content"
        elif st - c > margin and st >= 0.5:
            roles[s.group] = "style"
        else:
            roles[s.group] = "both"
    return roles


def profile_dict(name: str, roles: dict[str, str], description: str) -> dict:
    """A profile (profiles/ format) from probe roles: the owner branch trains all columns there."""
    modules = []
    for group, role in roles.items():
        if role == "content":
            modules.append({"prefix": group, "content": "all", "style": "masked"})
        elif role == "style":
            modules.append({"prefix": group, "content": "masked", "style": "all"})
    return {"name": name, "description": description,
            "default": {"content": "masked", "style": "masked"}, "modules": modules}


def average(per_image: list[list[GroupScore]]) -> list[GroupScore]:
    groups = [s.group for s in per_image[0]]
    return [
        GroupScore(g, float(np.mean([scores[i].content_gain for scores in per_image])),
                   float(np.mean([scores[i].style_gain for scores in per_image])))
        for i, g in enumerate(groups)
    ]


def markdown_table(mean_scores: list[GroupScore], roles: dict[str, str]) -> str:
    lines = ["| module group | content gain | style gain | role |", "|---|---|---|---|"]
    for s in mean_scores:
        lines.append(f"| {s.group} | {s.content_gain:+.3f} | {s.style_gain:+.3f} | {roles[s.group]} |")
    return "\n".join(lines)
