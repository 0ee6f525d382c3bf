"""`unziplora probe`: measure a base model's block roles with B-LoRA's probe (arXiv 2403.14572, Sec. 4).

Which attention modules carry content and which carry style is an empirical property of a
base model (arXiv 2412.04465, Sec. 3, "Block separation"; docs/method.md). The probe: train one
ordinary LoRA on an image with the prompt "A <identifier>", keep only ONE module group's part,
generate, and score whether the subject or the style came back, relative to the base model with
no LoRA. A UNet's groups are its attention groups (B-LoRA's unit); FLUX.1's are its double- and
single-stream blocks (the unit SplitFlux and the FLUX profile name), its LoRA trained by flow matching. Groups whose part brings back mostly the subject get content "all"; mostly the style,
style "all". The result is a profile (profiles/ format) and a table of the evidence.

Scoring: on the toy world (the embedded model, its held-out images) by the world's oracles; on
any other model and images by the paper's metrics (DINO for the subject, CSD-style or CLIP-I for
the style), whose weights the user gives as local folders.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from pathlib import Path
from typing import Callable

import yaml

from .models.loading import quietly
from .config import SampleConfig
from .errors import UnZipLoRAError
from .core.sampling import Conditioning, sample_images
from .core.inject import attention_modules, is_mmdit
from .methods.single_lora import SingleLoraSpec, keep_modules, train_single_lora
from .core.prompts import encode_prompts
from .models.families import family_of

# (generated images, the reference image) -> (content score, style score)
Scorer = Callable[[list, object], tuple[float, float]]


def module_groups(denoiser) -> list[str]:
    """The units roles are assigned to: a UNet's attention groups (e.g. up_blocks.0.attentions.1), as
    B-LoRA's; FLUX's blocks (transformer_blocks.N double-stream, single_transformer_blocks.N
    single-stream), as SplitFlux assigns roles per block and the FLUX profile names them."""
    groups = []
    for name, _ in attention_modules(denoiser):
        group = name.removesuffix(".attn") if is_mmdit(denoiser) else name.split(".transformer_blocks.")[0]
        if group not in groups:
            groups.append(group)
    return groups


@dataclass
class GroupScore:
    group: str
    content_gain: float  # mean content similarity to the input, minus the no-LoRA floor
    style_gain: float


def oracle_scorer(images, reference) -> tuple[float, float]:
    """The toy world's oracles: content and style similarity to the reference, averaged."""
    from .toyworld import content_similarity, style_similarity

    content = np.mean([content_similarity(img, reference) for img in images])
    style = np.mean([style_similarity(img, reference) for img in images])
    return float(content), float(style)


def metric_scorer(dino, style_encoder) -> Scorer:
    """The paper's metrics: DINO cosine for the subject; CSD-style (a CsdEncoder) or CLIP-I for the style."""
    from .metrics.scores import mean_pairwise_cosine

    def score(images, reference) -> tuple[float, float]:
        content = mean_pairwise_cosine(dino.images(images), dino.images([reference]))
        gen, ref = style_encoder.images(images), style_encoder.images([reference])
        if isinstance(gen, tuple):  # CSD returns (style, content) features
            gen, ref = gen[0], ref[0]
        return content, mean_pairwise_cosine(gen, ref)

    return score


def probe_image(pipe, image, identifier: str, spec: SingleLoraSpec, sample: SampleConfig,
                scorer: Scorer = oracle_scorer) -> list[GroupScore]:
    """Gains of every module group for one image (pipe is left without adapters)."""
    family = family_of(pipe)
    denoiser = family.denoiser_of(pipe)
    device = denoiser.device
    prompt = f"A {identifier}"
    embeds, pooled = encode_prompts(pipe, [prompt], device)
    cond = Conditioning(embeds, pooled)
    floor_c, floor_s = scorer(sample_images(pipe, cond, sample, spec.resolution), image)
    state = train_single_lora(pipe, image, spec, device)
    scores = []
    for group in module_groups(denoiser):
        part = {f"{family.denoiser}.{k}": v for k, v in keep_modules(state, (group,)).items()}
        pipe.load_lora_weights(copy.copy(part), adapter_name="probe")
        c, s = scorer(sample_images(pipe, cond, sample, spec.resolution), image)
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


def profile_dict(name: str, roles: dict[str, str], description: str,
                 scores: list[GroupScore] | None = None) -> dict:
    """A profile (profiles/ format) from probe roles: the owner branch trains all columns there.

    Its `b_lora` entry names, per kind, the group of that role with the largest gain (the first
    one without `scores`), or null where no group has that role: B-LoRA then cannot run here.
    """
    modules = []
    for group, role in roles.items():
        if role == "content":
            modules.append({"prefix": group, "content": "all", "style": "masked"})
        elif role == "style":
            modules.append({"prefix": group, "content": "masked", "style": "all"})
    gains = {s.group: (s.content_gain, s.style_gain) for s in scores or []}

    def best(role: str, index: int) -> str | None:
        groups = [g for g, r in roles.items() if r == role]
        return max(groups, key=lambda g: gains.get(g, (0.0, 0.0))[index]) if groups else None

    return {"name": name, "description": description,
            "default": {"content": "masked", "style": "masked"}, "modules": modules,
            "b_lora": {"content": best("content", 0), "style": best("style", 1)}}


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


PROFILE_FILE, EVIDENCE_FILE = "unziplora_profile.yaml", "block_roles.md"


@quietly
def probe_block_roles(base, out_dir: str | Path, images: list | None = None, scorer: Scorer | None = None,
                      name: str | None = None, steps: int = 300, rank: int = 16, lr: float = 1e-3,
                      resolution: int | None = None, sample: SampleConfig | None = None,
                      progress: bool = True) -> tuple[dict, str]:
    """Probe every module group of the resolved base model `base` on `images` and write OUT/unziplora_profile.yaml
    (what `--profile` takes) and OUT/block_roles.md (the evidence). Returns (profile, table).

    `images` default to four held-out images of the toy world, scored by its oracles (the
    embedded model); other images need a `scorer` of real metrics (`metric_scorer`). Written into a
    model folder that has a SHA256SUMS, the checksums are renewed.
    """
    from tqdm.auto import tqdm

    from .models.loading import CHECKSUM_FILE, write_checksums
    from .run.folder import write_text_atomic

    if images is None:
        from .toyworld import heldout_images

        images = [image for _, _, image in heldout_images(4, 64)]
        resolution = resolution or 64
    elif scorer is None:
        raise UnZipLoRAError("the toy world's oracles only judge toy-world images: to probe your own images, "
                             "give the metric models (--dino FOLDER and --csd FOLDER or --clip FOLDER)")
    if not images:
        raise UnZipLoRAError("give at least one image to probe with")
    scorer = scorer or oracle_scorer
    resolution = resolution or 1024
    # 25 sampling steps per image at the family's guidance (SDXL, SD: CFG 5; FLUX.1-dev: its guidance input 3.5)
    guidance = base.family.defaults.get("sample.guidance_scale", 5.0)
    sample = sample or SampleConfig(steps=25, guidance_scale=guidance, seeds=[0, 1000, 111, 1234])
    pipe = base.load()
    spec = SingleLoraSpec("A sks", rank=rank, steps=steps, lr=lr, resolution=resolution)
    per_image = [probe_image(pipe, image, "sks", spec, sample, scorer)
                 for image in tqdm(images, desc="probe", unit="image", disable=not progress)]
    mean = average(per_image)
    roles = assign_roles(mean)
    table = markdown_table(mean, roles)
    name = name or Path(base.source).name
    profile = profile_dict(name, roles, f"block roles of {name}, measured by unziplora probe", mean)
    settings = (f"{len(images)} images, LoRA rank {rank}, {steps} steps, lr {lr}, prompt 'A sks', "
                f"{len(sample.seeds)} seeds x {sample.steps} steps, guidance {sample.guidance_scale}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / PROFILE_FILE, yaml.safe_dump(profile, sort_keys=False))
    write_text_atomic(out / EVIDENCE_FILE, (
        f"# Block roles of {name}\n\n"
        "B-LoRA's probe (arXiv 2403.14572): one LoRA per image on every attention module; keep ONE group's part; "
        "generate; gain = similarity to the input minus the no-LoRA floor.\n\n"
        f"Settings: {settings}.\n\n{table}\n"))
    if (out / CHECKSUM_FILE).is_file():  # a model folder: its profile and evidence are part of it
        write_checksums(out)
    return profile, table
