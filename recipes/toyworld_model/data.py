"""What one pretraining step draws: renders with their captions, and the captions' SDXL conditioning."""

from __future__ import annotations

import numpy as np
import torch

from unziplora.toyworld.render import render_array
from unziplora.toyworld.spec import WORLD_SPEC, WorldSpec
from unziplora.toyworld.split import pretraining_sample


def render_batch(rng: np.random.Generator, n: int, size: int, workers=None,
                 spec: WorldSpec = WORLD_SPEC) -> tuple[torch.Tensor, list[str]]:
    """n pretraining renders of the world `spec` as (n, 3, size, size) in [-1, 1], and their captions.
    The samples are drawn here in order; `workers` (a process pool) only draws the pixels, so the
    result is the same."""
    samples = [pretraining_sample(rng, spec) for _ in range(n)]
    jobs = [(s.subject, s.style, size, s.seed, None, spec) for s in samples]
    arrays = np.stack(workers.starmap(render_array, jobs) if workers else [render_array(*job) for job in jobs])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, [s.caption for s in samples]


def encode_text(components: dict, captions: list[str], token_ids: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL conditioning with gradients: penultimate states of both encoders, pooled projection.
    `token_ids` caches each caption's ids (the world has 64 captions; tokenising is a GPU step's cost)."""
    token_ids = {} if token_ids is None else token_ids
    for caption in set(captions) - token_ids.keys():
        token_ids[caption] = [components[key]([caption], padding="max_length", max_length=77, truncation=True,
                                              return_tensors="pt").input_ids for key in ("tokenizer", "tokenizer_2")]
    states = []
    pooled = None
    for i, enc_key in enumerate(("text_encoder", "text_encoder_2")):
        ids = torch.cat([token_ids[caption][i] for caption in captions]).to(components[enc_key].device)
        out = components[enc_key](ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        if enc_key == "text_encoder_2":
            pooled = out.text_embeds
    return torch.cat(states, dim=-1), pooled
