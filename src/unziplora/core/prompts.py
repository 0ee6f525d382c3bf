"""Prompts: the three training prompts, user prompts with <c>/<s>, and their encoding (by the model's family).

UnZipLoRA (arXiv 2412.04465, Sec. 3, "Prompt separation") trains with three prompts per
image: combined p = "A <c> {class} in {style} style", content p_c = "A <c> {class}" and
style p_s = "A {class} in {style} style". In user prompts `<c>` stands for the run's rare
identifier and `<s>` for its style words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import PromptConfig
from ..errors import UnZipLoRAError
from ..models.families import family_of

CONTENT_TAG = "<c>"
STYLE_TAG = "<s>"
MAX_TOKENS = 77


@dataclass(frozen=True)
class PromptTriple:
    """The combined prompt and the two branch prompts of prompt separation."""

    combined: str
    content: str
    style: str


TEMPLATE_FIELDS = ("identifier", "subject", "style")


def fill_template(template: str, fields: dict[str, str], key: str) -> str:
    """`template` with {identifier}, {subject} and {style} filled in, and "A" before a vowel made
    "An" ("An astronaut in ..."). Only those three plain fields are allowed: an attribute, index,
    conversion or format spec (e.g. {identifier.__class__}) or an unbalanced brace is one error."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UnZipLoRAError(f"prompts.{key} {template!r} is not a valid template ({exc}); "
                             "write literal braces as {{ and }}") from None
    for _, name, spec, conversion in parsed:
        if name is not None and (name not in TEMPLATE_FIELDS or spec or conversion):
            raise UnZipLoRAError(f"prompts.{key} uses {{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}; use only {{identifier}}, {{subject}}, {{style}}")
    text = _tidy(template.format(**fields))
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def training_prompts(cfg: PromptConfig) -> PromptTriple:
    """p, p_c and p_s from the templates; with separation off all three are p (ablation)."""
    cfg.require_words()
    fields = {"identifier": cfg.identifier, "subject": cfg.subject.strip(), "style": cfg.style.strip()}
    triple = PromptTriple(fill_template(cfg.combined, fields, "combined"), fill_template(cfg.content, fields, "content"),
                          fill_template(cfg.style_prompt, fields, "style_prompt"))
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


def unknown_words(tokenizer, text: str) -> list[str]:
    """Words of `text` a small base model never learned: where the tokenizer is a toy one (a few
    hundred tokens, whole words for what the model saw), the words it has no token for. A real
    tokenizer (CLIP's 49,408 BPE tokens) knows every word, so nothing is reported there."""
    vocab = tokenizer.get_vocab()
    if len(vocab) > 5000:
        return []
    words = re.findall(r"[a-z]+", text.lower())
    return sorted({w for w in words if f"{w}</w>" not in vocab})


def unknown_words_warning(tokenizer, text: str) -> str | None:
    """A warning line naming the words of `text` the base model never learned and the ones it
    knows (decompose's prompts, generate's prompt); None when it knows them all."""
    unknown = unknown_words(tokenizer, text)
    if not unknown:
        return None
    known = sorted(w[:-4] for w in tokenizer.get_vocab() if w.endswith("</w>") and len(w) > 5)
    return f"the base model never learned the word(s) {', '.join(unknown)}; it knows only: {', '.join(known)}"


def check_length(tokenizer, prompt: str) -> str | None:
    """A warning line when the prompt is longer than CLIP's 77 tokens, naming what is cut."""
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True)["input_ids"]
    limit = getattr(tokenizer, "model_max_length", MAX_TOKENS) or MAX_TOKENS
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1])
    return f"prompt is {len(ids)} tokens, CLIP reads {limit}: only {kept!r} is used"


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each prompt's text states (N, 77, D) and pooled embedding (N, P; None where the base model's
    family has none), as the family encodes them (models/families.py; SDXL: both encoders'
    penultimate states and the second's pooled projection, arXiv 2307.01952, Sec. 2.1)."""
    return family_of(pipe).encode(pipe, prompts, device)


@dataclass(frozen=True)
class Embedded:
    """One encoded prompt: its text states (1, 77, D) and pooled embedding (1, P) or None."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device) -> "Embedded":
        return Embedded(self.states.to(device), None if self.pooled is None else self.pooled.to(device))


@dataclass(frozen=True)
class EmbeddedTriple:
    """p, p_c and p_s encoded (arXiv 2412.04465, Sec. 3, "Prompt separation")."""

    combined: Embedded
    content: Embedded
    style: Embedded


def encode_triple(pipe, prompts: PromptTriple, device) -> EmbeddedTriple:
    states, pooled = encode_prompts(pipe, [prompts.combined, prompts.content, prompts.style], device)
    one = [Embedded(states[i : i + 1], None if pooled is None else pooled[i : i + 1]) for i in range(3)]
    return EmbeddedTriple(*one)
