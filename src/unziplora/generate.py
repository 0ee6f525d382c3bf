"""Generation with a decomposition: content alone, style alone, both, or across runs (docs/method.md §7).

- content / style: the branch as an ordinary LoRA in the base model's stock diffusers pipeline
  (`load_lora_weights`), prompted with one ordinary prompt.
- both: the two-branch layers with their mergers and prompt separation: the user's prompt gives
  p, p_c and p_s (arXiv 2412.04465, Sec. 3, "Prompt separation", used at inference as in the
  authors' code).
- cross: run A's content branch with run B's style branch, prompted the same way.
Baselines generate as their references do: a DreamBooth-LoRA run's "both" is its one LoRA once;
B-LoRA's "both" and "cross" load the content part and the style part together under one
ordinary prompt (arXiv 2403.14572; yardenfren1996/B-LoRA's inference.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .core.attention import CONTENT_KWARG, STYLE_KWARG
from .names import Branch, Mode
from .config import SampleConfig
from .errors import UnZipLoRAError
from .core.fuse import fuse_for_generation
from .core.sampling import Conditioning, sample_images, step_batch
from .core.inject import inject_two_branch_lora
from .methods import Combine, plugin
from .models.base import BaseModel
from .models.families import family_of
from .models.loading import check_resolution, pick_device, quietly
from .models.profiles import INFERENCE_PROFILE
from .core.prompts import (CONTENT_TAG, STYLE_TAG, check_length, encode_prompts, expand_tags, split_prompt,
                           unknown_words_warning)
from .run.folder import atomic_output_dir, refuse_existing, save_grid
from .run.sources import BranchSource
from .run.manifest import check_source


def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    for prompt in prompts:
        warning = check_length(pipe.tokenizer, prompt)
        if warning:
            print(f"note: {warning}")
    return encode_prompts(pipe, prompts, pipe.unet.device)


@dataclass
class Plan:
    """What one generation will do, settled before any model loads (so a wrong output folder or a
    missing tag costs no loading time)."""

    mode: Mode
    content: BranchSource
    style: BranchSource
    base: BaseModel
    sample: SampleConfig
    resolution: int | None
    identifier: str
    style_words: str
    out_dir: Path


def default_out_dir(home: Path, mode: Mode) -> Path:
    """A new folder per call: HOME/samples/MODE-001, -002, ... (a second prompt never collides)."""
    n = 1
    while (home / "samples" / f"{mode.value}-{n:03d}").exists():
        n += 1
    return home / "samples" / f"{mode.value}-{n:03d}"


def plan_generation(prompt: str, out_dir: str | Path | None, mode: Mode | str, run=None, content_run=None,
                    style_run=None, sample: SampleConfig | None = None, base_model: str | None = None,
                    identifier: str | None = None, style_words: str | None = None, force: bool = False,
                    revision: str | None = None, **settings) -> Plan:
    """Resolve the sources, the base model (the runs', at the revision they were trained at;
    `base_model` / `revision` replace them), the sampling settings (`settings`: steps,
    guidance_scale, seeds, resolution, guidance_rescale; None = the run's, which follow its base
    model) and the output folder, and check them."""

    mode = Mode(mode)
    if content_run and style_run:
        mode = Mode.CROSS
    elif mode is Mode.CROSS:
        raise UnZipLoRAError("cross-run generation needs both --content RUN and --style RUN")
    elif run is None:
        raise UnZipLoRAError("give the run folder to generate from: unziplora generate RUN ...")
    paths = {Branch.CONTENT: content_run or run, Branch.STYLE: style_run or run}
    for path in paths.values():
        check_source(path)
    runs = [r for r in map(BranchSource.run_of, paths.values()) if r is not None]
    bases = {(r.manifest.base_model, r.manifest.revision) for r in runs}
    if base_model is None and len(bases) != 1:
        raise UnZipLoRAError("pass --base-model: the sources name " + ("no base model" if not bases else "different base models"))
    name, run_revision = (base_model, revision) if base_model is not None else bases.pop()
    base = BaseModel.resolve(name, revision or run_revision)
    # Every weight file is checked against the base model's shapes before a tensor of it loads.
    shapes = base.shapes()
    content = BranchSource.open(paths[Branch.CONTENT], Branch.CONTENT, shapes)
    style = BranchSource.open(paths[Branch.STYLE], Branch.STYLE, shapes)
    config = runs[0].manifest.config if runs else None
    if sample is None:
        given = {k: v for k, v in settings.items() if v is not None}
        sample = SampleConfig(**{**(config.to_dict()["sample"] if config else {}), **given})
    # A plain LoRA file says nothing of its resolution: then the base model's default size.
    resolution = sample.resolution or (config.train.resolution if config else None)
    identifier = identifier or content.manifest_value("prompts", "identifier")
    style_words = style_words or style.manifest_value("prompts", "style_words")
    for tag, value, flag in ((CONTENT_TAG, identifier, "--identifier"), (STYLE_TAG, style_words, "--style-words")):
        if tag in prompt and value is None:
            raise UnZipLoRAError(f"the prompt uses {tag} but the LoRA file does not say what it stands for; pass {flag}")
    home = runs[0].path if runs else Path(".")
    out = Path(out_dir) if out_dir is not None else default_out_dir(home, mode)
    refuse_existing(out, force)
    return Plan(mode, content, style, base, sample, resolution, identifier or "", style_words or "", out)


@quietly
def generate(
    prompt: str,
    out_dir: str | Path | None = None,
    mode: Mode | str = Mode.BOTH,
    run: str | Path | None = None,
    content_run: str | Path | None = None,
    style_run: str | Path | None = None,
    sample: SampleConfig | None = None,
    num_images: int = 1,
    base_model: str | None = None,
    device: str = "auto",
    force: bool = False,
    identifier: str | None = None,
    style_words: str | None = None,
    fused: bool = True,
    progress: bool = False,
    on_step=None,
    revision: str | None = None,
    **settings,
) -> list[Path]:
    """Generate images and write them, a grid and generation.json into `out_dir` (default: a new
    RUN/samples/MODE-NNN folder).

    `run`, `content_run` and `style_run` are run folders or plain LoRA files (diffusers,
    kohya, B-LoRA); for plain files pass `identifier` / `style_words` if the prompt uses <c> / <s>,
    and `base_model`. Sampling settings default to the run's; `settings` (steps, guidance_scale,
    seeds, resolution, guidance_rescale) or a whole `sample` replace them. `fused` folds the LoRAs
    into the weights and computes the separated cross-attention K/V once (fuse.py); False runs
    the two-branch layers at every step. `on_step(done, total)` follows the denoising steps.
    """
    if num_images <= 0:
        raise UnZipLoRAError(f"--num-images must be positive, got {num_images}")
    plan = plan_generation(prompt, out_dir, mode, run, content_run, style_run, sample, base_model, identifier,
                           style_words, force, revision, **settings)
    torch_device = pick_device(device)
    check_resolution(plan.resolution, plan.base, torch_device, num_images)
    pipe = plan.base.load(torch.float16 if torch_device.type == "cuda" else torch.float32)
    unknown = unknown_words_warning(pipe.tokenizer, expand_tags(prompt, plan.identifier, plan.style_words))
    if unknown:  # a small model draws something else for them, as decompose says of its prompts
        print(f"warning: {unknown}")
    pipe.to(torch_device)
    pipe.vae.to(torch.float32)
    cond, prompts = _conditioning(pipe, plan, prompt, num_images, fused)
    images = sample_images(pipe, cond, plan.sample, plan.resolution, num_images, progress, on_step)
    return _write(plan, images, prompts, num_images, force)


def _conditioning(pipe, plan: Plan, prompt: str, num_images: int, fused: bool) -> tuple[Conditioning, dict]:
    """Load the LoRAs into the pipeline as the mode needs and encode the prompt(s)."""
    mode, content, style = plan.mode, plan.content, plan.style
    # How two LoRAs combine is the content run's method's to say (methods/base.py `Combine`).
    combine = None if mode in (Mode.CONTENT, Mode.STYLE) else (
        plugin(content.method).combine(mode, style.method) if content.method else Combine.TWO_BRANCH)
    one_lora, both_parts = combine is Combine.ONE_LORA, combine is Combine.BOTH_PARTS
    if combine is not Combine.TWO_BRANCH:
        source = style if mode is Mode.STYLE else content
        weights = {**content.stock_lora(), **style.stock_lora()} if both_parts else source.stock_lora()
        try:
            pipe.load_lora_weights(weights, adapter_name=mode.value)
            if fused:  # diffusers' own fusion: W + B A, then drop the adapter layers
                pipe.fuse_lora(adapter_names=[mode.value])
                pipe.unload_lora_weights()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # what diffusers / PEFT raise for a misfit
            raise UnZipLoRAError(f"{source.path} does not load into {plan.base.source} "
                                 f"({str(exc).strip().splitlines()[-1][:160]}); pass the base model it was trained on") from None
        text = expand_tags(prompt, plan.identifier, plan.style_words)
        embeds, pooled = _encode(pipe, [text])
        return Conditioning(embeds, pooled), {"prompt": text}
    if CONTENT_TAG not in prompt and STYLE_TAG not in prompt:
        print(f"note: the prompt has no {CONTENT_TAG} or {STYLE_TAG}, so the content and style branches see the same "
              f'prompt; write e.g. "A {CONTENT_TAG} cat in {STYLE_TAG} style" to give each its part')
    triple = split_prompt(prompt, plan.identifier, plan.style_words)
    embeds, pooled = _encode(pipe, [triple.combined, triple.content, triple.style])
    lora = inject_two_branch_lora(pipe.unet, INFERENCE_PROFILE, max(content.rank, style.rank))
    lora.load_branch(content.branch_state(lora), Branch.CONTENT, str(content.path))
    lora.load_branch(style.branch_state(lora), Branch.STYLE, str(style.path))
    lora.set_masking(True)
    cond = Conditioning(embeds[0:1], None if pooled is None else pooled[0:1], embeds[1:2], embeds[2:3])
    if fused:  # every K/V is cached, the unconditional half's too: what the family's pipeline gives it
        family = family_of(pipe)
        batch = [step_batch(e, num_images, plan.sample.guidance_scale, family.unconditional(pipe, e))
                 .to(pipe.unet.device, pipe.unet.dtype) for e in (cond.combined, cond.content, cond.style)]
        fuse_for_generation(pipe.unet, *batch)
        cond = Conditioning(cond.combined, cond.pooled)  # K/V are cached in the processors now
    return cond, {"combined": triple.combined, "content": triple.content, "style": triple.style}


def _write(plan: Plan, images: list, prompts: dict, num_images: int, force: bool) -> list[Path]:
    """The images, their grid and generation.json, all or nothing."""
    sample = plan.sample
    with atomic_output_dir(plan.out_dir, force) as tmp:
        paths = []
        for i, image in enumerate(images):
            name = f"seed{sample.seeds[i // num_images]}_{i % num_images}.png"
            image.save(tmp / name)
            paths.append(plan.out_dir / name)
        save_grid(images, tmp / "grid.png", columns=min(len(images), 4))
        record = {
            "mode": plan.mode.value, "prompts": prompts, "seeds": list(sample.seeds), "steps": sample.steps,
            "guidance_scale": sample.guidance_scale, "guidance_rescale": sample.guidance_rescale,
            "resolution": plan.resolution, "num_images": num_images, "content_source": str(plan.content.path),
            "style_source": str(plan.style.path), "base_model": plan.base.source, "revision": plan.base.revision,
        }
        (tmp / "generation.json").write_text(json.dumps(record, indent=2))
    return paths
