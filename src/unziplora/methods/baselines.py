"""The systems UnZipLoRA is compared with, as run folders users can generate from.

- DreamBooth-LoRA (arXiv 2208.12242 with LoRA, arXiv 2106.09685): one LoRA on every attention
  projection, trained on the combined prompt p with the run's rank, steps and learning rate. It
  cannot split: its content and style LoRAs are the same file. With `train.prior_images` N > 0,
  the base model first draws N images of the class prompt "A {subject}" and every step adds
  DreamBooth's prior-preservation term on one of them (arXiv 2208.12242, Eq. 2, weight
  train.prior_weight).
- B-LoRA (arXiv 2403.14572, Sec. 4; reference code yardenfren1996/B-LoRA): one LoRA on the two
  attention modules the base model's profile names (`Profile.b_lora`; SDXL:
  up_blocks.0.attentions.0 for content, up_blocks.0.attentions.1 for style), trained on
  "A <identifier>" (the paper's "A [v]"), by default with the reference's rank 64, lr 5e-5 and
  1000 steps (`Method.reference`, applied by `defaults.resolve_config` under what the base model
  and the user set), then split: the content module's part is the
  content LoRA, the style module's part the style LoRA. At inference `<c>` and `<s>` both stand
  for the identifier, and "both" loads the two parts together under one prompt (generate.py).
Both use the same data path and loss as UnZipLoRA (methods/single_lora.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.branch import Branch
from ..config import RunConfig
from ..core.data import load_image
from ..errors import UnZipLoRAError
from ..core.inject import attention_modules
from ..run.modelcard import write_model_card
from ..models.loading import load_pipeline, pick_device
from ..models.profiles import resolve_profile
from ..core.prompts import fill_template, training_prompts
from ..run.folder import LORA_WEIGHT_NAME, MANIFEST_FILE, RunFolder, atomic_output_dir
from . import Method
from .single_lora import SingleLoraSpec, keep_modules, train_single_lora


def class_images(pipe, prompt: str, n: int, config: RunConfig, device, folder: Path) -> list:
    """DreamBooth's class images: n samples of the class prompt from the frozen base model, kept in the run."""
    import torch
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    pipe.to(device)
    images = []
    for i in tqdm(range(n), desc="class images", leave=False):
        image = pipe(prompt, num_inference_steps=config.sample.steps, guidance_scale=config.sample.guidance_scale,
                     height=config.train.resolution, width=config.train.resolution,
                     generator=torch.Generator().manual_seed(config.train.seed + i)).images[0]
        image.save(folder / f"{i:03d}.png")
        images.append(image)
    return images


def decompose_baseline(image, out_dir: str | Path, config: RunConfig, method: Method | str, force: bool = False,
                       progress: bool = True, sources: dict[str, str] | None = None, callbacks=()) -> RunFolder:
    """Train a baseline on one image and write a run folder with content_lora/ and style_lora/.

    `decompose.decompose(..., method=...)` is the entry point users call; this is its baseline half.
    """
    try:
        method = Method(method)
    except ValueError:
        method = None
    if method is None or not method.is_baseline:
        names = ", ".join(m.value for m in Method if m.is_baseline)
        raise UnZipLoRAError(f"not a baseline method; use one of {names} (or decompose() for UnZipLoRA)")
    from diffusers import StableDiffusionXLPipeline

    from ..decompose import base_manifest

    t_start = time.perf_counter()
    prompts = training_prompts(config.prompts)
    picture = load_image(image)
    base_dir = Path(config.model.base_model).expanduser()
    profile = resolve_profile(config.model.profile, base_dir if base_dir.is_dir() else None)
    if method is Method.B_LORA:
        parts = dict(zip((Branch.CONTENT, Branch.STYLE), ((m,) for m in profile.b_lora_modules())))
        prompt, modules = f"A {config.prompts.identifier}", parts[Branch.CONTENT] + parts[Branch.STYLE]
    else:
        prompt, modules = prompts.combined, ()
    t = config.train
    n_prior = t.prior_images if method is Method.DREAMBOOTH_LORA else 0
    # DreamBooth's class prompt (arXiv 2208.12242, Sec. 4.2), "An" before a vowel
    class_prompt = fill_template("A {subject}", {"subject": config.prompts.subject.strip()}, "class prompt")
    spec = SingleLoraSpec(prompt, config.lora.rank, t.steps, config.lora.lr, t.resolution, t.seed, modules,
                          prior_prompt=class_prompt if n_prior else "", prior_weight=t.prior_weight)
    with atomic_output_dir(out_dir, force) as tmp:
        pipe = load_pipeline(config.model.base_model, config.model.revision)
        profile.check_against([name for name, _ in attention_modules(pipe.unet)])
        device = pick_device(t.device)
        priors = class_images(pipe, spec.prior_prompt, n_prior, config, device, tmp / "class_images") if n_prior else []
        t0 = time.perf_counter()
        state = train_single_lora(pipe, picture, spec, device, progress, prior_images=priors, callbacks=callbacks)
        train_s = time.perf_counter() - t0
        for branch in (Branch.CONTENT, Branch.STYLE):
            part = state if method is Method.DREAMBOOTH_LORA else keep_modules(state, parts[branch])
            StableDiffusionXLPipeline.save_lora_weights(
                tmp / f"{branch.value}_lora", unet_lora_layers=part, weight_name=LORA_WEIGHT_NAME,
                safe_serialization=True,
            )
        picture.save(tmp / "input.png")
        (tmp / "config.yaml").write_text(config.to_yaml())
        manifest = base_manifest(config, profile, prompts, picture, sources)
        if method is Method.B_LORA:  # B-LoRA learns no style words: <s> stands for its token too
            manifest["prompts"]["style_words"] = config.prompts.identifier
        manifest.update({
            "method": method.value, "training_prompt": prompt, "trained_modules": list(modules) or "all",
            "reference_settings": _reference_record(method, config),
            "prior_preservation": {"images": n_prior, "prompt": spec.prior_prompt, "weight": t.prior_weight}
            if n_prior else None,
            "steps": t.steps,
            "timings": {"train_s": round(train_s, 3), "s_per_step": round(train_s / t.steps, 4),
                        "total_s": round(time.perf_counter() - t_start, 3)},
            "files": {"content_lora": f"content_lora/{LORA_WEIGHT_NAME}", "style_lora": f"style_lora/{LORA_WEIGHT_NAME}"},
        })
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        write_model_card(tmp, manifest, picture, out_dir)
    return RunFolder.open(out_dir)


def _reference_record(method: Method, config: RunConfig) -> dict | None:
    """The reference code's settings and whether this run trained with them (a user may set others)."""
    ref = method.reference
    if ref is None:
        return None
    used = (config.lora.rank, config.lora.lr, config.train.steps) == (ref.rank, ref.lr, ref.steps)
    return {"source": ref.source, "rank": ref.rank, "lr": ref.lr, "steps": ref.steps, "used": used}
