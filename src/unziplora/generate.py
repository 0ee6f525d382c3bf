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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from .core.attention import CONTENT_KWARG, STYLE_KWARG
from .names import Branch, Mode
from .config import SampleConfig
from .errors import UnZipLoRAError
from .core.sampling import Conditioning, check_sampling, sample_images, sampling_for
from .core.inject import inject_two_branch_lora
from .methods import Combine, plugin
from .models.base import BaseModel
from .models.families import family_of
from .models.loading import check_resolution, pick_device, pick_dtype, quietly
from .models.profiles import INFERENCE_PROFILE
from .core.prompts import (CONTENT_TAG, STYLE_TAG, check_length, encode_prompts, expand_tags, split_prompt,
                           unknown_words_warning)
from .run.folder import atomic_output_dir, check_output, save_grid
from .run.sources import BranchSource
from .run.manifest import check_source


def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    for prompt in prompts:
        warning = check_length(pipe.tokenizer, prompt)
        if warning:
            print(f"note: {warning}")
    return encode_prompts(pipe, prompts, family_of(pipe).denoiser_of(pipe).device)


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
    check_sampling(base.family, sample)
    # A plain LoRA file says nothing of its resolution: then the base model's default size.
    resolution = sample.resolution or (config.train.resolution if config else None)
    identifier = identifier or content.manifest_value("prompts", "identifier")
    style_words = style_words or style.manifest_value("prompts", "style_words")
    for tag, value, flag in ((CONTENT_TAG, identifier, "--identifier"), (STYLE_TAG, style_words, "--style-words")):
        if tag in prompt and value is None:
            raise UnZipLoRAError(f"the prompt uses {tag} but the LoRA file does not say what it stands for; pass {flag}")
    home = runs[0].path if runs else Path(".")
    out = Path(out_dir) if out_dir is not None else default_out_dir(home, mode)
    check_output(out, [*paths.values(), base.source], force, "generate")
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
    into the weights as far as the denoiser allows (a UNet: everything, and the separated
    cross-attention K/V computed once, fuse.py; FLUX: the projections that see image tokens only,
    flux_sampling.py); False runs the two-branch layers at every step. `on_step(done, total)` follows the denoising steps.
    """
    if num_images <= 0:
        raise UnZipLoRAError(f"--num-images must be positive, got {num_images}")
    plan = plan_generation(prompt, out_dir, mode, run, content_run, style_run, sample, base_model, identifier,
                           style_words, force, revision, **settings)
    torch_device = pick_device(device)
    check_resolution(plan.resolution, plan.base, torch_device, num_images)
    family = plan.base.family
    pipe = plan.base.load(pick_dtype("auto", torch_device, family))  # the family's dtype on CUDA, fp32 on a CPU
    unknown = unknown_words_warning(pipe.tokenizer, expand_tags(prompt, plan.identifier, plan.style_words))
    if unknown:  # a small model draws something else for them, as decompose says of its prompts
        print(f"warning: {unknown}")
    pipe.to(torch_device)
    if family.upcast_vae:
        pipe.vae.to(torch.float32)
    cond, prompts = _conditioning(pipe, plan, prompt, num_images, fused)
    done: list = []
    try:
        sample_images(pipe, cond, plan.sample, plan.resolution, num_images, progress, on_step, into=done)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or the page's cancel: the seeds already finished are kept
        reason, seeds = str(exc) or "interrupted", len(done) // num_images
        if not seeds:
            raise KeyboardInterrupt(f"{reason}; no images were written") from None
        kept = replace(plan, sample=replace(plan.sample, seeds=list(plan.sample.seeds[:seeds])))
        paths = _write(kept, done[: seeds * num_images], prompts, num_images, force)
        raise KeyboardInterrupt(f"{reason}; the {len(paths)} image(s) of the {seeds} of {len(plan.sample.seeds)} "
                                f"seeds finished before are in {plan.out_dir}") from None
    return _write(plan, done, prompts, num_images, force)


def _conditioning(pipe, plan: Plan, prompt: str, num_images: int, fused: bool) -> tuple[Conditioning, dict]:
    """Load the LoRAs into the pipeline as the mode needs and encode the prompt(s)."""
    mode, content, style = plan.mode, plan.content, plan.style
    if content.tokens is not None or style.tokens is not None:
        return _token_conditioning(pipe, plan, prompt, fused)
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
    lora = inject_two_branch_lora(family_of(pipe).denoiser_of(pipe), INFERENCE_PROFILE, max(content.rank, style.rank))
    lora.load_branch(content.branch_state(lora), Branch.CONTENT, str(content.path))
    lora.load_branch(style.branch_state(lora), Branch.STYLE, str(style.path))
    lora.set_masking(True)
    cond = Conditioning(embeds[0:1], None if pooled is None else pooled[0:1], embeds[1:2], embeds[2:3])
    if fused:  # what the branches share folded into the weights, as the denoiser's sampling can (sampling.py)
        cond = sampling_for(pipe).fuse(pipe, cond, plan.sample, num_images)
    return cond, {"combined": triple.combined, "content": triple.content, "style": triple.style}


def _token_conditioning(pipe, plan: Plan, prompt: str, fused: bool) -> tuple[Conditioning, dict]:
    """Learned text tokens (Inspiration Tree, textual inversion): the token of each source the mode
    uses goes into every tokenizer and text encoder with diffusers' own `load_textual_inversion`
    (one file per encoder; a LoRA source of a cross-run generation loads as an ordinary LoRA),
    and the prompt is one ordinary prompt."""
    used = {Mode.CONTENT: [plan.content], Mode.STYLE: [plan.style]}.get(plan.mode, [plan.content, plan.style])
    words = {Branch.CONTENT: plan.identifier, Branch.STYLE: plan.style_words}
    if len(used) == 2 and words[Branch.CONTENT] == words[Branch.STYLE]:  # two runs' tokens of one name
        words[Branch.STYLE] = words[Branch.STYLE].rstrip(">") + "-style" + (">" if words[Branch.STYLE].endswith(">") else "")
    encoders = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for source in used:
        if source.tokens is None:
            pipe.load_lora_weights(source.stock_lora(), adapter_name=source.branch.value)
            if fused:
                pipe.fuse_lora(adapter_names=[source.branch.value])
                pipe.unload_lora_weights()
            continue
        if sorted(source.tokens) != encoders:
            raise UnZipLoRAError(f"{source.path} holds tokens for {', '.join(sorted(source.tokens))}, and "
                                 f"{plan.base.source} has {', '.join(encoders)}; pass the base model it was trained on")
        for name, file in source.tokens.items():
            try:
                pipe.load_textual_inversion(str(file), token=words[source.branch], text_encoder=getattr(pipe, name),
                                            tokenizer=getattr(pipe, name.replace("text_encoder", "tokenizer")))
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise UnZipLoRAError(f"{file} does not load into {plan.base.source} "
                                     f"({str(exc).strip().splitlines()[-1][:160]}); pass the base model it was trained "
                                     "on") from None
    text = expand_tags(prompt, words[Branch.CONTENT], words[Branch.STYLE])
    embeds, pooled = _encode(pipe, [text])
    return Conditioning(embeds, pooled), {"prompt": text}


def _write(plan: Plan, images: list, prompts: dict, num_images: int, force: bool) -> list[Path]:
    """The images, their grid and generation.json, all or nothing."""
    sample = plan.sample
    for source in (plan.content.path, plan.style.path):  # a run deleted meanwhile gets no samples/ recreated
        if plan.out_dir.is_relative_to(source) and not source.is_dir():
            raise UnZipLoRAError(f"the run folder {source} was deleted while generating; nothing was written")
    with atomic_output_dir(plan.out_dir, force, "generate") as tmp:
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
