"""DreamBooth-LoRA (arXiv 2208.12242 with LoRA, arXiv 2106.09685): the baseline that cannot split.

One LoRA on every attention projection, trained on the combined prompt p with the run's rank,
steps, learning rate and training settings. Its content and style LoRAs are the same file. With
`train.prior_images` N > 0, the base model first draws N images of the class prompt "A {subject}"
and every step adds DreamBooth's prior-preservation term on one of them (arXiv 2208.12242, Eq. 2,
weight train.prior_weight).
"""

from __future__ import annotations

from pathlib import Path

from ..names import Branch, Method, Mode
from ..core.prompts import fill_template
from ..run.folder import LORA_WEIGHT_NAME
from .base import Combine, MethodPlugin, ModelCardText
from .single_lora import SingleLoraLoop, SingleLoraSpec, keep_modules


def class_images(pipe, prompt: str, n: int, config, device, folder: Path, progress: bool = False) -> list:
    """DreamBooth's class images: n samples of the class prompt from the frozen base model, kept in the run."""
    import torch
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    pipe.to(device)
    images = []
    for i in tqdm(range(n), desc="class images", leave=False, disable=not progress):
        image = pipe(prompt, num_inference_steps=config.sample.steps, guidance_scale=config.sample.guidance_scale,
                     height=config.train.resolution, width=config.train.resolution,
                     generator=torch.Generator().manual_seed(config.train.seed + i)).images[0]
        image.save(folder / f"{i:03d}.png")
        images.append(image)
    return images


class SingleLoraPlugin(MethodPlugin):
    """A method that trains one ordinary LoRA and cuts it into a content and a style part."""

    def training_prompt(self, config, prompts) -> str:
        raise NotImplementedError

    def modules(self, profile) -> dict[Branch, tuple[str, ...]]:
        """The module prefixes of each part (empty: every attention module)."""
        return {Branch.CONTENT: (), Branch.STYLE: ()}

    def prior_images(self, spec, pipe, device, workdir: Path, progress: bool = False) -> tuple[str, list]:
        return "", []

    def prepare(self, spec, pipe, image, prompts, profile, device, dtype, workdir: Path, progress: bool = False,
                callbacks=()):
        c = spec.config
        self.parts = self.modules(profile)
        prior_prompt, priors = self.prior_images(spec, pipe, device, workdir, progress)
        single = SingleLoraSpec(self.training_prompt(c, prompts), c.lora.rank, c.train.steps, c.lora.lr,
                                c.train.resolution, c.train.seed, self.parts[Branch.CONTENT] + self.parts[Branch.STYLE],
                                prior_prompt=prior_prompt, prior_weight=c.train.prior_weight, train=c.train)
        return SingleLoraLoop(pipe, image, single, device, dtype, priors)

    def write_weights(self, loop, folder: Path) -> dict[str, str]:
        state = loop.lora_state()
        loop.release()
        for branch in (Branch.CONTENT, Branch.STYLE):
            part = keep_modules(state, self.parts[branch]) if self.parts[branch] else state
            loop.family.pipeline_class().save_lora_weights(
                folder / f"{branch.value}_lora", unet_lora_layers=part, weight_name=LORA_WEIGHT_NAME,
                safe_serialization=True)
        return {"content_lora": f"content_lora/{LORA_WEIGHT_NAME}", "style_lora": f"style_lora/{LORA_WEIGHT_NAME}"}

    def manifest_fields(self, spec, loop) -> dict:
        modules = self.parts[Branch.CONTENT] + self.parts[Branch.STYLE]
        return {"training_prompt": loop.spec.prompt, "trained_modules": list(modules) or "all",
                "final_loss": loop.history[-1].loss}


class DreamBoothLoRA(SingleLoraPlugin):
    method = Method.DREAMBOOTH_LORA
    help = "DreamBooth-LoRA baseline: one LoRA on every attention projection (cannot split)"
    card = ModelCardText(
        "DreamBooth-LoRA: one LoRA that cannot split; the content and style files are the same LoRA.",
        "Both together (the one LoRA, once, with the whole prompt):",
    )

    def training_prompt(self, config, prompts) -> str:
        return prompts.combined

    def prior_images(self, spec, pipe, device, workdir: Path, progress: bool = False) -> tuple[str, list]:
        n = spec.config.train.prior_images
        if not n:
            return "", []
        # DreamBooth's class prompt (arXiv 2208.12242, Sec. 4.2), "An" before a vowel
        prompt = fill_template("A {subject}", {"subject": spec.config.prompts.subject.strip()}, "class prompt")
        return prompt, class_images(pipe, prompt, n, spec.config, device, workdir / "class_images", progress)

    def manifest_fields(self, spec, loop) -> dict:
        t = spec.config.train
        prior = {"images": t.prior_images, "prompt": loop.spec.prior_prompt, "weight": t.prior_weight}
        return {**super().manifest_fields(spec, loop), "prior_preservation": prior if t.prior_images else None}

    def combine(self, mode: Mode, style_method: Method | None) -> Combine:
        # Its content and style LoRAs are one LoRA: "both" is that LoRA once (their sum would apply it twice).
        return Combine.ONE_LORA if mode is Mode.BOTH else Combine.TWO_BRANCH
