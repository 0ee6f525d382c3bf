"""Merging a content LoRA with a style LoRA into one ordinary LoRA (direct, or ZipLoRA: ziplora.py).

Direct merge (ZipLoRA, arXiv 2311.13600, Sec. 3, the "direct arithmetic merge" baseline): dW = B_c A_c + B_s A_s. It is stored exactly, without an SVD, as one LoRA of rank
r_c + r_s: A = [A_c; A_s], B = [B_c, B_s], so B A = B_c A_c + B_s A_s. Inputs can be run
folders (their content / style LoRA) or LoRA files in any format `run.loras.load_lora_any` reads,
of a UNet (SDXL, SD 1.x/2.x) or of FLUX.1's transformer; the merged file is the base model's
pipeline's own LoRA format (`unet.` or `transformer.` keys).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.loading import quietly
from ..names import Branch, MergeMethod, choice_error
from ..errors import UnZipLoRAError
from ..models.families import FAMILIES
from ..run.numbers import check_weights
from ..run.folder import LORA_WEIGHT_NAME, atomic_output_dir, check_output
from ..run.sources import BranchSource


def direct_merge(content: dict[str, torch.Tensor], style: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One LoRA whose update is the sum of both: rank-concatenated, exact."""
    merged = {}
    modules = {k[: -len(".lora_A.weight")] for k in (*content, *style) if k.endswith(".lora_A.weight")}
    for module in sorted(modules):
        parts = [(s[f"{module}.lora_A.weight"], s[f"{module}.lora_B.weight"]) for s in (content, style)
                 if f"{module}.lora_A.weight" in s]
        if any(a.shape[0] != b.shape[1] for a, b in parts):
            raise UnZipLoRAError(f"{module}: A and B of a LoRA have different ranks; the LoRA file is damaged")
        shapes = {(a.shape[1], b.shape[0]) for a, b in parts}
        if len(shapes) != 1:
            raise UnZipLoRAError(f"{module}: the two LoRAs have different layer shapes {sorted(shapes)}; "
                                 "they were made for different base models")
        merged[f"{module}.lora_A.weight"] = torch.cat([a for a, _ in parts], dim=0).contiguous()
        merged[f"{module}.lora_B.weight"] = torch.cat([b for _, b in parts], dim=1).contiguous()
    return merged


@quietly
def merge(content: str | Path, style: str | Path, out_dir: str | Path, method: MergeMethod | str = MergeMethod.DIRECT,
          force: bool = False, base_model: str | None = None, prompts: tuple[str | None, str | None] = (None, None),
          steps: int = 100, device: str = "auto", revision: str | None = None, progress: bool = False) -> Path:
    """Write the merged LoRA as out_dir/pytorch_lora_weights.safetensors (diffusers format).

    ziplora needs the base model and the two LoRAs' prompts; run folders supply them (p_c of
    the content run, p_s of the style run), plain files need `base_model` and `prompts`. It
    trains on `device` (auto: CUDA when there is one). The base model is the runs' (at the revision
    they were trained at) unless `base_model` / `revision` name another.
    """
    try:
        method = MergeMethod(method)
    except ValueError:
        raise UnZipLoRAError(choice_error("merge method", method, MergeMethod)) from None
    from ..models.base import BaseModel

    check_output(out_dir, [content, style, base_model], force, "merge")  # before anything loads
    runs = BranchSource.run_of(content), BranchSource.run_of(style)
    named = [(base_model, revision) if base_model else
             ((r.manifest.base_model, r.manifest.revision) if r else None) for r in runs]
    # each checked against its own base model (a plain file: the other's; neither: ranks and sizes only)
    bases = [BaseModel.resolve(*(n or named[1 - i])) if (n or named[1 - i]) else None for i, n in enumerate(named)]
    families = [b.family if b else None for b in bases]
    if families[0] and families[1] and families[0].denoiser != families[1].denoiser:
        raise UnZipLoRAError(f"the content LoRA is for a {families[0].title} model and the style LoRA for a "
                             f"{families[1].title} model; merge two LoRAs of one base model")
    shapes = [b.shapes() if b else None for b in bases]
    # each branch's ordinary LoRA (a run's exported one), its header checked against its base model
    sources = (BranchSource.plain_lora(content, Branch.CONTENT, shapes[0], runs[0]),
               BranchSource.plain_lora(style, Branch.STYLE, shapes[1], runs[1]))
    denoiser = sources[0].denoiser
    if sources[1].denoiser != denoiser:
        raise UnZipLoRAError(f"{content} updates a {denoiser} and {style} a {sources[1].denoiser}: they are LoRAs of "
                             "different base-model families; merge two LoRAs of one base model")
    if method is MergeMethod.DIRECT:
        merged = direct_merge(sources[0].plain, sources[1].plain)
    else:
        from .ziplora import ziplora_merge

        base = bases[0] or bases[1]
        prompt_c = prompts[0] or sources[0].manifest_value("prompts", "content")
        prompt_s = prompts[1] or sources[1].manifest_value("prompts", "style")
        if base is None or prompt_c is None or prompt_s is None:
            raise UnZipLoRAError("ziplora merging of plain LoRA files needs --base-model, --content-prompt and --style-prompt")
        config = next((s.manifest_value("config") for s in sources if s.run is not None), None)
        resolution = config.train.resolution if config else 1024
        merged = ziplora_merge(sources[0], sources[1], base, (prompt_c, prompt_s), resolution, steps, device=device,
                               progress=progress)
    check_weights(merged, f"the {method.value} merge of {content} and {style}")  # never write NaNs silently
    family = next((f for f in families if f), None) or next(f for f in FAMILIES.values() if f.denoiser == denoiser)
    with atomic_output_dir(out_dir, force, "merge") as tmp:
        # Ranks differ per module, so no single alpha: diffusers then uses alpha = rank (scale 1).
        family.pipeline_class().save_lora_weights(tmp, **{f"{denoiser}_lora_layers": merged},
                                                  weight_name=LORA_WEIGHT_NAME, safe_serialization=True)
    return Path(out_dir)
