"""Base-model families: what differs between SDXL, Stable Diffusion 1.5 / 2.x and FLUX.1, in one place.

A family says which diffusers pipeline loads it and which folder parts it has, how it encodes a
prompt (SDXL: both encoders' penultimate states and a pooled embedding, arXiv 2307.01952,
Sec. 2.1; SD 1.x/2.x: one encoder's last states), what else its UNet is conditioned on (SDXL's
pooled text and size/crop time ids, Sec. 2.2; nothing for SD), what the unconditional half of
classifier-free guidance sees (SDXL: zeros, its `force_zeros_for_empty_prompt`; SD: the empty
prompt's encoding), its built-in block-role profile and its paper-equivalent defaults. Code
outside this module asks the family (`family_of(pipe)`, `BaseModel.family`) and never tests which
one it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _no_grad(method):
    """torch.no_grad, with torch imported at the call: resolving a base model (its family, parts and
    defaults) happens before torch loads, so argument errors are answered at once."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return method(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # the diffusers pipeline class
    parts: tuple[str, ...]  # folders of a pipeline folder that must hold weights or configs
    weight_parts: tuple[str, ...]  # the parts with weights (safetensors only)
    profile: str  # the built-in block-role profile (models/profiles/<profile>.yaml)
    defaults: dict = field(default_factory=dict)  # dotted settings: the family's paper-equivalent defaults
    lora_label: str = ""  # kohya's ss_base_model_version for its base checkpoint
    denoiser: str = "unet"  # the pipeline part that denoises (and that training's objective drives)
    cuda_dtype: str = "float16"  # the frozen weights' dtype on CUDA under mixed_precision auto
    hub_tag: str = "stable-diffusion-xl"  # the Hugging Face hub's tag for models of this family (model cards)
    title: str = "SDXL"  # how a user names its checkpoints (the model card's ComfyUI line)
    cfg: bool = True  # its pipeline runs classifier-free guidance (a negative prompt, guidance_rescale)
    upcast_vae: bool = True  # generation decodes in fp32 (SDXL's VAE overflows fp16); False: the pipeline's dtype

    def denoiser_of(self, pipe):
        """The pipeline's denoising network (SDXL, SD: its UNet; FLUX: its transformer)."""
        return getattr(pipe, self.denoiser)

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    # ----- conditioning ------------------------------------------------------------------------
    @_no_grad
    def encode(self, pipe, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 77, D) text states of each prompt and, where the family has one, its pooled embedding."""
        raise NotImplementedError

    def added_cond(self, pooled: torch.Tensor | None, resolution: int, batch: int, device, dtype) -> dict | None:
        """The UNet's `added_cond_kwargs` beside the text states (None: the family has none)."""
        return None

    def unconditional(self, pipe, like: torch.Tensor) -> torch.Tensor:
        """The text states the unconditional half of classifier-free guidance sees (shaped like `like`)."""
        import torch

        return torch.zeros_like(like)

    def keep_unconditional(self, pipe) -> None:
        """Encode what `unconditional` needs while the text encoders are still loaded (SDXL: nothing)."""

    def pipeline_embeds(self, pipe, states: torch.Tensor, pooled: torch.Tensor | None) -> dict:
        """The pipeline call's precomputed-embedding arguments (conditional and unconditional)."""
        return {"prompt_embeds": states, "negative_prompt_embeds": self.unconditional(pipe, states).to(states)}


class SDXLFamily(Family):
    @_no_grad
    def encode(self, pipe, prompts, device):
        # StableDiffusionXLPipeline.encode_prompt: both encoders' penultimate states, concatenated,
        # and the second encoder's pooled projection (arXiv 2307.01952, Sec. 2.1)
        states, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return states, pooled

    def added_cond(self, pooled, resolution, batch, device, dtype):
        return {"text_embeds": pooled.expand(batch, -1).to(device, dtype),
                "time_ids": sdxl_time_ids(resolution, n=batch).to(device, dtype)}

    def pipeline_embeds(self, pipe, states, pooled):
        # SDXL's unconditional half is zeros for an empty negative prompt (force_zeros_for_empty_prompt)
        import torch

        return {"prompt_embeds": states, "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": torch.zeros_like(states),
                "negative_pooled_prompt_embeds": torch.zeros_like(pooled)}


class SDFamily(Family):
    @_no_grad
    def encode(self, pipe, prompts, device):
        states, _ = pipe.encode_prompt(prompts, device, 1, False)  # one CLIP encoder's last states
        return states, None

    def unconditional(self, pipe, like):
        # SD's unconditional input is the empty prompt's encoding (its pipelines encode "")
        self.keep_unconditional(pipe)
        return pipe._unziplora_unconditional.to(like).expand(like.shape[0], -1, -1)

    @_no_grad
    def keep_unconditional(self, pipe):
        # kept on the pipeline: training releases the text encoders, previews still need it
        if getattr(pipe, "_unziplora_unconditional", None) is None:
            if pipe.text_encoder is None:
                raise RuntimeError("the empty prompt was not encoded before the text encoder was released "
                                   "(call family.keep_unconditional(pipe) first)")
            empty, _ = pipe.encode_prompt([""], pipe.text_encoder.device, 1, False)
            pipe._unziplora_unconditional = empty


class FluxFamily(Family):
    """FLUX.1 (black-forest-labs/flux, FluxTransformer2DModel): T5-XXL states as the text stream, CLIP's
    pooled embedding beside the timestep, the guidance value as an input of the guidance-distilled
    dev model (no classifier-free guidance batch), flow matching (arXiv 2210.02747) on packed latents."""

    max_sequence_length = 512  # T5 tokens: FluxPipeline's default for FLUX.1-dev (schnell: 256)
    training_guidance = 3.5  # the guidance input while training (diffusers' train_dreambooth_lora_flux.py)

    @_no_grad
    def encode(self, pipe, prompts, device):
        states, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length)
        return states, pooled

    def pipeline_embeds(self, pipe, states, pooled):
        # guidance-distilled: the pipeline's guidance_scale is an input of the transformer, no negative half
        return {"prompt_embeds": states, "pooled_prompt_embeds": pooled}


def sdxl_time_ids(size: int, crop: tuple[int, int] = (0, 0), original_size: tuple[int, int] | None = None,
                  n: int = 1) -> torch.Tensor:
    """SDXL add_time_ids for n images: original size, crop coordinates, target size (arXiv 2307.01952,
    Sec. 2.2); the original size defaults to the target's (an uncropped image generated at `size`),
    as the UnZipLoRA authors condition training on the ids inference uses."""
    import torch

    values = [*(original_size or (size, size)), *crop, size, size]
    return torch.tensor([values], dtype=torch.float32).expand(n, -1)


SDXL = SDXLFamily(
    "sdxl", "StableDiffusionXLPipeline",
    parts=("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    weight_parts=("unet", "vae", "text_encoder", "text_encoder_2"), profile="sdxl",
    lora_label="sdxl_base_v1-0",
)
# Stable Diffusion 1.x / 2.x: 512 px (2.x-768: 768), one encoder; the same UnZipLoRA settings
# otherwise (rank 64 on the attention projections, 600 steps).
SD = SDFamily(
    "sd", "StableDiffusionPipeline",
    parts=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    weight_parts=("unet", "vae", "text_encoder"), profile="sd15",
    defaults={"train.resolution": 512}, lora_label="sd_v1", title="Stable Diffusion", hub_tag="stable-diffusion",
)
# FLUX.1-dev: 1024 px, bf16 on CUDA (its published weights' dtype), guidance 3.5 over 28 sampling steps
# (FluxPipeline's defaults); rank 64 and 600 steps as SDXL's, not tuned on FLUX.
FLUX = FluxFamily(
    "flux", "FluxPipeline",
    parts=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    weight_parts=("transformer", "vae", "text_encoder", "text_encoder_2"), profile="flux",
    defaults={"train.resolution": 1024, "sample.guidance_scale": 3.5, "sample.steps": 28}, lora_label="flux1",
    denoiser="transformer", cuda_dtype="bfloat16", upcast_vae=False, title="FLUX.1", hub_tag="flux", cfg=False,  # FluxPipeline decodes without a cast
)
FAMILIES = {f.pipeline: f for f in (SDXL, SD, FLUX)}


def family_named(pipeline_class_name: str | None) -> Family | None:
    """The family of a pipeline class name (model_index.json's `_class_name`), None if unsupported."""
    return FAMILIES.get(pipeline_class_name or "")


def family_of(pipe) -> Family:
    """The family of a loaded pipeline."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(f"{type(pipe).__name__} is no supported base-model family")
