"""UnZipLoRA (arXiv 2412.04465) and its two ablations, as plugins over the paper's core (core/).

- UnZipLoRA (the paper's M3): prompt, column and block separation (core/train.py).
- M1, prompt separation only: both branches train every column (masks.enabled false).
- M2, prompt and column separation without block separation (model.block_separation false).
The ablations are the paper's ablation study (its Fig. 6); what defines each is a setting a
user may not contradict (`defining`), so config.yaml and the manifest say exactly what ran.
"""

from __future__ import annotations

from pathlib import Path

from ..names import Branch, Method
from ..core.sampling import Conditioning, sample_images
from ..core.train import Trainer, branch_fractions, tie_record
from ..run.folder import LORA_WEIGHT_NAME, RUN_FORMAT_VERSION, STATE_FILE, save_safetensors
from .base import MethodPlugin, ModelCardText


class UnZipLoRA(MethodPlugin):
    method = Method.UNZIPLORA
    denoisers = ("unet", "transformer")  # FLUX.1's transformer: core/flux.py
    help = "UnZipLoRA (the full method: prompt, column and block separation)"
    resumable = True
    has_preview = True
    card = ModelCardText(
        "Each LoRA alone is its branch's update with the branch's hard column mask folded in and the "
        "merger vectors left out (M (.) B A), as the authors export it. The mergers weigh the two branches "
        "against each other and act only when both run together, from `unziplora.safetensors`.",
        "Both together with prompt separation (three prompts, the mergers on, exactly as trained):",
        "`unziplora.safetensors` (both branches, mergers, masks), `loss.csv` / `loss.png`, ",
    )

    def prepare(self, spec, pipe, image, prompts, profile, device, dtype, workdir: Path, progress: bool = False,
                callbacks=()):
        return Trainer.prepare(spec.config, pipe, image, prompts, profile, device, dtype)

    def write_weights(self, loop, folder: Path) -> dict[str, str]:
        """The full state for combined use (A, B, m, M of both branches), and each branch alone as an
        ordinary diffusers LoRA, M (.) B A without the mergers, as the authors export it."""
        lora = loop.lora
        metadata = {"format": "unziplora", "format_version": str(RUN_FORMAT_VERSION), "rank": str(lora.rank)}
        save_safetensors(lora.state_dict(), folder / STATE_FILE, metadata)
        denoiser = loop.family.denoiser  # the pipeline's save_lora_weights names its part: unet_ / transformer_
        for branch in (Branch.CONTENT, Branch.STYLE):
            loop.family.pipeline_class().save_lora_weights(
                folder / f"{branch.value}_lora", weight_name=LORA_WEIGHT_NAME, safe_serialization=True,
                **{f"{denoiser}_lora_layers": lora.ordinary_lora(branch),
                   # alpha = r: the update is applied at scale 1, as trained.
                   f"{denoiser}_lora_adapter_metadata": {"r": lora.rank, "lora_alpha": lora.rank,
                                                         "target_modules": lora.target_modules()}},
            )
        return {"content_lora": f"content_lora/{LORA_WEIGHT_NAME}", "style_lora": f"style_lora/{LORA_WEIGHT_NAME}",
                "state": STATE_FILE}

    def preview(self, loop, seed_count: int = 1) -> list:
        """Content alone (p_c), style alone (p_s), together (p with p_c, p_s): one image each."""
        e, lora, cfg = loop.embeds, loop.lora, loop.config
        sample = type(cfg.sample)(steps=cfg.sample.steps, guidance_scale=cfg.sample.guidance_scale,
                                  seeds=cfg.sample.seeds[:seed_count], guidance_rescale=cfg.sample.guidance_rescale)
        images = []
        plans = [
            ({Branch.CONTENT}, Conditioning(e.content.states, e.content.pooled)),
            ({Branch.STYLE}, Conditioning(e.style.states, e.style.pooled)),
            ({Branch.CONTENT, Branch.STYLE},
             Conditioning(e.combined.states, e.combined.pooled, e.content.states, e.style.states)),
        ]
        for branches, cond in plans:
            lora.set_active(branches)
            images += sample_images(loop.pipe, cond, sample, cfg.train.resolution)
        lora.set_active({Branch.CONTENT, Branch.STYLE})
        return images

    def manifest_fields(self, spec, loop) -> dict:
        return {"final_loss": loop.history[-1].loss, "mask_fraction": branch_fractions(loop.lora),
                "cone_score_ties": tie_record(loop)}


class UnZipLoRAM1(UnZipLoRA):
    method = Method.UNZIPLORA_M1
    help = "ablation M1: prompt separation only (no column masks, no block roles)"
    defining = {"masks.enabled": False}


class UnZipLoRAM2(UnZipLoRA):
    method = Method.UNZIPLORA_M2
    help = "ablation M2: prompt and column separation, no block roles"
    defining = {"model.block_separation": False}
