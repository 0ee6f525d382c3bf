"""Merging a content LoRA with a style LoRA into one ordinary LoRA (direct, or ZipLoRA: ziplora.py).

Direct merge (ZipLoRA, arXiv 2311.13600, Sec. 3, the "direct arithmetic merge" baseline): dW = B_c A_c + B_s A_s. It is stored exactly, without an SVD, as one LoRA of rank
r_c + r_s: A = [A_c; A_s], B = [B_c, B_s], so B A = B_c A_c + B_s A_s. Inputs can be run
folders (their content / style LoRA) or LoRA files in any format `export.load_lora_any` reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.loading import quietly
from ..names import Branch, MergeMethod, choice_error
from ..errors import UnZipLoRAError
from ..run.loras import load_lora_any
from ..run.numbers import check_weights
from ..run.folder import LORA_WEIGHT_NAME, RunFolder, atomic_output_dir, check_output
from ..run.sources import BranchSource


def _plain_source(path: str | Path, branch: Branch, run: RunFolder | None, base) -> BranchSource:
    """A branch as its exported ordinary LoRA, its header checked against `base` before loading;
    the run folder, if any, is kept for its manifest."""
    return BranchSource(Path(path), branch, run=run, plain=load_lora_any(run.lora_dir(branch) if run else path, base))


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
    for b in bases:
        if b is not None and b.family.denoiser != "unet":  # the merges read and write UNet LoRAs
            raise UnZipLoRAError(f"merge works on UNet base models (SDXL, SD 1.x/2.x), not {b.family.title}; "
                                 "load the two LoRAs as two adapters instead (the run's model card shows how)")
    shapes = [b.shapes() if b else None for b in bases]
    sources = (_plain_source(content, Branch.CONTENT, runs[0], shapes[0]),
               _plain_source(style, Branch.STYLE, runs[1], shapes[1]))
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
    with atomic_output_dir(out_dir, force, "merge") as tmp:
        # Ranks differ per module, so no single alpha: diffusers then uses alpha = rank (scale 1).
        (next((b for b in bases if b), None) or BaseModel.resolve()).family.pipeline_class().save_lora_weights(
            tmp, unet_lora_layers=merged, weight_name=LORA_WEIGHT_NAME, safe_serialization=True
        )
    return Path(out_dir)
