"""B-LoRA (arXiv 2403.14572, Sec. 4; reference code yardenfren1996/B-LoRA).

One LoRA on the two attention modules the base model's profile names (`Profile.b_lora`; SDXL:
up_blocks.0.attentions.0 for content, up_blocks.0.attentions.1 for style), trained on
"A <identifier>" (the paper's "A [v]"), by default with the reference's rank 64, lr 5e-5 and
1000 steps (a settings layer under what the base model and the user set), then split: the
content module's part is the content LoRA, the style module's part the style LoRA. At inference
`<c>` and `<s>` both stand for the identifier, and "both" loads the two parts together under
one prompt (the reference's inference.py).
"""

from __future__ import annotations

from ..names import Branch, Method, Mode
from .base import Combine, ModelCardText, ReferenceSettings
from .dreambooth import SingleLoraPlugin

# The reference README's command (the paper's settings): --rank=64 --learning_rate=5e-5
# --max_train_steps=1000, batch 1, constant LR.
B_LORA_REFERENCE = ReferenceSettings("yardenfren1996/B-LoRA (arXiv 2403.14572)",
                                     {"lora.rank": 64, "lora.lr": 5e-5, "train.steps": 1000})


class BLoRA(SingleLoraPlugin):
    method = Method.B_LORA
    help = "B-LoRA baseline: one LoRA on two modules, split (reference settings: rank 64, lr 5e-5, 1000 steps)"
    reference = B_LORA_REFERENCE
    card = ModelCardText(
        "B-LoRA (arXiv 2403.14572): one LoRA trained on two attention modules, split into the content "
        "module's part and the style module's part. `<c>` and `<s>` both stand for its training token.",
        "Both together as B-LoRA does it (both parts loaded, one ordinary prompt):",
    )

    def training_prompt(self, config, prompts) -> str:
        return f"A {config.prompts.identifier}"

    def modules(self, profile) -> dict[Branch, tuple[str, ...]]:
        content, style = profile.b_lora_modules()
        return {Branch.CONTENT: (content,), Branch.STYLE: (style,)}

    def style_words(self, config) -> str:
        return config.prompts.identifier  # B-LoRA learns no style words: <s> stands for its token too

    def manifest_fields(self, spec, loop) -> dict:
        ref, c = self.reference, spec.config
        used = all(value == _get(c, key) for key, value in ref.values.items())
        return {**super().manifest_fields(spec, loop),
                "reference_settings": {"source": ref.source, **{k.split(".")[1]: v for k, v in ref.values.items()},
                                       "used": used}}

    def combine(self, mode: Mode, style_method: Method | None) -> Combine:
        # B-LoRA combines by loading both parts (disjoint modules) under one prompt.
        return Combine.BOTH_PARTS if style_method is Method.B_LORA else Combine.TWO_BRANCH


def _get(config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)
