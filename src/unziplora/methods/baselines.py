"""The systems UnZipLoRA is compared with, as run folders users can generate from (METHOD §3).

- DreamBooth-LoRA (arXiv 2208.12242 with LoRA, arXiv 2106.09685): one LoRA on every attention
  projection, trained on the combined prompt. It cannot split: its content and style LoRAs
  are the same file. With `train.prior_images` N > 0, the base model first draws N images of
  the class prompt p_s (p without the identifier) and every step adds DreamBooth's
  prior-preservation term on one of them (arXiv 2208.12242, Eq. 2, weight train.prior_weight).
- B-LoRA (arXiv 2403.14572): one LoRA on the profile's content and style modules only
  (SDXL: up_blocks.0.attentions.0/.2 and up_blocks.0.attentions.1 / up_blocks.1), trained on
  "A <identifier>", split afterwards: the content modules' part is the content LoRA, the style
  modules' part the style LoRA.
Both use the run's rank, steps, learning rate, resolution and seed, and the same data path and
loss as UnZipLoRA (methods/single_lora.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..branch import Branch, Role
from ..config import RunConfig
from ..data import load_image
from ..errors import UnZipLoRAError
from ..modelcard import write_model_card
from ..models import load_pipeline, pick_device
from ..profiles import Profile, resolve_profile
from ..prompts import training_prompts
from ..runfolder import LORA_WEIGHT_NAME, MANIFEST_FILE, RunFolder, atomic_output_dir
from .single_lora import SingleLoraSpec, keep_modules, train_single_lora

BASELINES = ("dreambooth-lora", "b-lora")


def owned_modules(profile: Profile, branch: Branch) -> tuple[str, ...]:
    """The module prefixes where the profile gives `branch` all columns (B-LoRA's blocks)."""
    return tuple(m.prefix for m in profile.modules if m.as_dict()[branch] is Role.ALL)


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


def decompose_baseline(image, out_dir: str | Path, config: RunConfig, method: str, force: bool = False,
                       progress: bool = True) -> RunFolder:
    """Train a baseline on one image and write a run folder with content_lora/ and style_lora/."""
    if method not in BASELINES:
        raise UnZipLoRAError(f"unknown method {method!r}; use unziplora or one of {', '.join(BASELINES)}")
    from diffusers import StableDiffusionXLPipeline

    from ..decompose import base_manifest

    t_start = time.perf_counter()
    prompts = training_prompts(config.prompts)
    picture = load_image(image)
    base_dir = Path(config.model.base_model).expanduser()
    profile = resolve_profile(config.model.profile, base_dir if base_dir.is_dir() else None)
    if method == "b-lora":
        prefixes = {b: owned_modules(profile, b) for b in (Branch.CONTENT, Branch.STYLE)}
        if not all(prefixes.values()):
            raise UnZipLoRAError(f"profile {profile.name!r} names no content or no style modules; B-LoRA needs both")
        prompt, modules = f"A {config.prompts.identifier}", prefixes[Branch.CONTENT] + prefixes[Branch.STYLE]
    else:
        prompt, modules = prompts.combined, ()
    t = config.train
    n_prior = t.prior_images if method == "dreambooth-lora" else 0
    spec = SingleLoraSpec(prompt, config.lora.rank, t.steps, config.lora.lr, t.resolution, t.seed, modules,
                          prior_prompt=prompts.style if n_prior else "", prior_weight=t.prior_weight)
    with atomic_output_dir(out_dir, force) as tmp:
        pipe = load_pipeline(config.model.base_model, config.model.revision)
        device = pick_device(t.device)
        priors = class_images(pipe, spec.prior_prompt, n_prior, config, device, tmp / "class_images") if n_prior else []
        t0 = time.perf_counter()
        state = train_single_lora(pipe, picture, spec, device, progress, prior_images=priors)
        train_s = time.perf_counter() - t0
        for branch in (Branch.CONTENT, Branch.STYLE):
            part = state if method == "dreambooth-lora" else keep_modules(state, prefixes[branch])
            StableDiffusionXLPipeline.save_lora_weights(
                tmp / f"{branch.value}_lora", unet_lora_layers=part, weight_name=LORA_WEIGHT_NAME,
                safe_serialization=True,
            )
        picture.save(tmp / "input.png")
        (tmp / "config.yaml").write_text(config.to_yaml())
        manifest = base_manifest(config, profile, prompts, picture)
        manifest.update({
            "method": method, "training_prompt": prompt, "trained_modules": list(modules) or "all",
            "prior_preservation": {"images": n_prior, "prompt": spec.prior_prompt, "weight": t.prior_weight}
            if n_prior else None,
            "steps": t.steps,
            "timings": {"train_s": round(train_s, 3), "s_per_step": round(train_s / t.steps, 4),
                        "total_s": round(time.perf_counter() - t_start, 3)},
            "files": {"content_lora": f"content_lora/{LORA_WEIGHT_NAME}", "style_lora": f"style_lora/{LORA_WEIGHT_NAME}"},
        })
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        write_model_card(tmp, manifest, picture, Path(out_dir).name)
    return RunFolder.open(out_dir)
