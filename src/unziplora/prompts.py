"""Prompts: the three training prompts, user prompts with <c>/<s>, and SDXL encoding.

UnZipLoRA (arXiv 2412.04465, Sec. 3, "Prompt separation") trains with three prompts per
image: combined p = "A <c> {class} in {style} style", content p_c = "A <c> {class}" and
style p_s = "A {class} in {style} style". In user prompts `<c>` stands for the run's rare
identifier and `<s>` for its style words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import PromptConfig
from .errors import UnZipLoRAError

CONTENT_TAG = "<c>"
STYLE_TAG = "<s>"
MAX_TOKENS = 77


@dataclass(frozen=True)
class PromptTriple:
    """The combined prompt and the two branch prompts of prompt separation."""

    combined: str
    content: str
    style: str


def training_prompts(cfg: PromptConfig) -> PromptTriple:
    """p, p_c and p_s from the templates; with separation off all three are p (ablation)."""
    if not cfg.subject.strip() or not cfg.style.strip():
        raise UnZipLoRAError("subject and style words are required: pass --subject WORD --style WORDS")
    fields = {"identifier": cfg.identifier, "subject": cfg.subject.strip(), "style": cfg.style.strip()}
    try:
        triple = PromptTriple(
            cfg.combined.format(**fields), cfg.content.format(**fields), cfg.style_prompt.format(**fields)
        )
    except (KeyError, IndexError) as exc:
        raise UnZipLoRAError(f"a prompt template uses an unknown field {exc}; use {{identifier}}, {{subject}}, {{style}}") from None
    if not cfg.separate:
        return PromptTriple(triple.combined, triple.combined, triple.combined)
    return triple


def _tidy(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def expand_tags(prompt: str, identifier: str, style: str) -> str:
    """Replace <c> by the identifier and <s> by the style words (one ordinary prompt)."""
    return _tidy(prompt.replace(CONTENT_TAG, identifier).replace(STYLE_TAG, style))


def split_prompt(prompt: str, identifier: str, style: str) -> PromptTriple:
    """Derive (p, p_c, p_s) from one user prompt for combined generation (arXiv 2412.04465, Sec. 3, "Prompt separation"; docs/method.md §7).

    p: both tags expanded. p_c: the style clause ("in <s> style", or a bare <s>) removed and <c>
    expanded. p_s: <c> removed and <s> expanded. "A <c> cat in <s> style in a boat" gives
    ("A monadikos cat in sketch style in a boat", "A monadikos cat in a boat",
    "A cat in sketch style in a boat").
    """
    content = re.sub(r"\b(in|with)\s+(the\s+)?<s>(\s+style)?", "", prompt)
    content = content.replace(STYLE_TAG, "")
    style_only = prompt.replace(CONTENT_TAG, "")
    return PromptTriple(
        expand_tags(prompt, identifier, style),
        expand_tags(content, identifier, style),
        expand_tags(style_only, identifier, style),
    )


def check_length(tokenizer, prompt: str) -> str | None:
    """A warning line when the prompt is longer than CLIP's 77 tokens, naming what is cut."""
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
    limit = getattr(tokenizer, "model_max_length", MAX_TOKENS) or MAX_TOKENS
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1])
    return f"prompt is {len(ids)} tokens, CLIP reads {limit}: only {kept!r} is used"


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL embeddings of each prompt: (penultimate states of both encoders, pooled), via diffusers.

    Uses StableDiffusionXLPipeline.encode_prompt (arXiv 2307.01952, Sec. 2.1: the two text
    encoders' penultimate hidden states concatenated, pooled embedding of the second).
    Returns (N, 77, D) and (N, P).
    """
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds, pooled
