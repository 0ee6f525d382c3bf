"""Inspiration Tree's seed selection and the content / style assignment of its two tokens.

Seed selection (google/inspiration_tree, seed_selection.py): each candidate seed's two tokens
generate, each alone as the prompt, 10 images for each of 4 generation seeds (25 denoising
steps); the images' features give s_l and s_r, the mean similarity of distinct pairs of one
token's images, and s_lr, the mean similarity across the two tokens; the seed's score is
s_l + s_r + (min(s_l, s_r) - s_lr) (:125-152), and the best seed continues (main_multiseed.py:95).
The features are CLIP's image features (ViT-B/32 in the reference) given by `--clip`; on the
embedded toy-world model, which has no CLIP, the world's oracles (docs/method.md §12).
The assignment (docs/method.md §12, fixed before any run was scored): the token whose
generations score higher on subject similarity is the content token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SampleConfig
from ..errors import UnZipLoRAError


@dataclass(frozen=True)
class Selection:
    seeds: tuple[int, ...] = (0, 1000, 1234, 111)  # main_multiseed.py:78 (offset by train.seed)
    gen_seeds: tuple[int, ...] = (4321, 95, 11, 87654)  # seed_selection.py:89
    images_per_seed: int = 10  # seed_selection.py:90
    steps: int = 25  # seed_selection.py:101


SELECTION = Selection()


class OracleFeatures:
    """The toy world's stand-in for CLIP: similarity = the mean of its content and style oracles;
    subject similarity = the content oracle against the input image."""

    name = "toy-world oracles: (content_similarity + style_similarity) / 2"
    subject_measure = "toy-world content oracle vs the input image"

    def embed(self, images):
        from ..toyworld import content_embedding, style_embedding

        return [(content_embedding(i), style_embedding(i)) for i in images]

    def similarity(self, a, b) -> np.ndarray:
        from ..toyworld import content_similarity, style_similarity

        return np.array([[(content_similarity(x[0], y[0]) + style_similarity(x[1], y[1])) / 2 for y in b] for x in a])

    def subject(self, images, image, subject: str) -> float:
        from ..toyworld import content_similarity

        return float(np.mean([content_similarity(i, image) for i in images]))


class ClipFeatures:
    """CLIP's normalised image features (the reference's), and its image-text cosine to "A {subject}"."""

    subject_measure = "CLIP image-text cosine to 'A {subject}'"

    def __init__(self, folder: str):
        from ..metrics.models import ClipEncoder

        self.encoder, self.name = ClipEncoder(folder), f"CLIP image features ({folder})"

    def embed(self, images):
        return self.encoder.images(images)

    def similarity(self, a, b) -> np.ndarray:
        return (a @ b.T).numpy()

    def subject(self, images, image, subject: str) -> float:
        text = self.encoder.texts([f"A {subject}".strip()])
        return float((self.encoder.images(images) @ text.T).mean())


def require_features(spec) -> None:
    """One line when the run has nothing to score seeds with: a base model other than the embedded
    one needs --clip."""
    if not spec.base.is_embedded and not spec.config.train.clip_model:
        raise UnZipLoRAError("--method inspiration-tree picks its seed and its content token with CLIP features of "
                             f"its generations, and {spec.base.display_name} comes with none: pass --clip FOLDER "
                             "(a local CLIP model, e.g. openai/clip-vit-base-patch32); only --base-model embedded "
                             "needs none")


def features_for(spec):
    """The features that score seeds and tokens: the toy world's oracles on the embedded model,
    else the CLIP model of --clip."""
    require_features(spec)
    return OracleFeatures() if spec.base.is_embedded else ClipFeatures(spec.config.train.clip_model)


def token_images(pipe, token: str, config, progress: bool = False, why: str = "") -> list:
    """The reference's generations of one token alone: images_per_seed for each generation seed;
    `progress` shows a bar labelled with `why` and the token."""
    from ..core.prompts import encode_prompts
    from ..core.sampling import Conditioning, sample_images

    embeds, pooled = encode_prompts(pipe, [token], pipe.unet.device)
    sample = SampleConfig(steps=SELECTION.steps, seeds=list(SELECTION.gen_seeds),
                          guidance_scale=config.sample.guidance_scale, guidance_rescale=config.sample.guidance_rescale)
    return sample_images(pipe, Conditioning(embeds, pooled), sample, config.train.resolution, SELECTION.images_per_seed,
                         progress=progress, desc=f"{why}{token} x {SELECTION.images_per_seed * len(sample.seeds)}")


def _mean_distinct_pairs(matrix: np.ndarray) -> float:
    upper = np.triu_indices(matrix.shape[0], k=1)
    return float(matrix[upper].mean()) if upper[0].size else 1.0


def consistency(features, left: list, right: list) -> dict[str, float]:
    """The reference's seed score from each token's generations (seed_selection.py:125-152)."""
    fl, fr = features.embed(left), features.embed(right)
    s_l, s_r = _mean_distinct_pairs(features.similarity(fl, fl)), _mean_distinct_pairs(features.similarity(fr, fr))
    s_lr = float(features.similarity(fl, fr).mean())
    return {"score": s_l + s_r + (min(s_l, s_r) - s_lr), "s_l": s_l, "s_r": s_r, "s_lr": s_lr}


def select_seed(make_loop, steps: int, config, pipe, features, progress: bool = False,
                callbacks=()) -> tuple[dict, dict]:
    """Train each candidate seed `steps` steps and score it; the best (the first of equals, as
    Python's max in main_multiseed.py:95) and the manifest's record of the selection. `progress`:
    a bar for each seed's training and for each token's scoring generations; `callbacks` (the
    page's progress and Cancel) see each seed's training steps. A stop there keeps nothing."""
    from ..core.callbacks import ProgressBar
    from ..core.train import fit
    from ..errors import TrainingInterrupted

    from .inspiration_tree import TOKENS

    candidates = []
    for number, offset in enumerate(SELECTION.seeds, 1):
        loop = make_loop(config.train.seed + offset)
        loop.total_steps = steps
        label = f"seed {number}/{len(SELECTION.seeds)}"
        try:
            fit(loop, [ProgressBar(progress, desc=f"{label} (selection)"), *callbacks])
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"interrupted in the seed selection ({label}, step {loop.step} of {steps}); "
                                      "Inspiration Tree keeps no checkpoint, nothing was kept") from None
        parts = consistency(features, *(token_images(pipe, t, config, progress, f"{label} scoring ") for t in TOKENS))
        candidates.append({"seed": loop.seed, **parts, "state": loop.state()})
    best = max(candidates, key=lambda c: c["score"])
    record = {
        "seeds": [c["seed"] for c in candidates], "steps_per_seed": steps, "chosen_seed": best["seed"],
        "scores": {str(c["seed"]): {k: round(c[k], 6) for k in ("score", "s_l", "s_r", "s_lr")} for c in candidates},
        "features": features.name, "training_steps": steps * len(candidates),
        "generation": {"gen_seeds": list(SELECTION.gen_seeds), "images_per_seed": SELECTION.images_per_seed,
                       "steps": SELECTION.steps, "guidance_scale": config.sample.guidance_scale},
    }
    return best, record


def assign_tokens(pipe, config, features, image, tokens: tuple[str, str], progress: bool = False) -> dict:
    """docs/method.md §12: the token whose generations score higher on subject similarity is the
    content token (the first token on a tie)."""
    scores = {t: features.subject(token_images(pipe, t, config, progress, "assigning "), image, config.prompts.subject)
              for t in tokens}
    content = tokens[0] if scores[tokens[0]] >= scores[tokens[1]] else tokens[1]
    return {"content": content, "style": next(t for t in tokens if t != content),
            "rule": "content = the token whose generations score higher on subject similarity (first token on a tie)",
            "measure": features.subject_measure, "subject_scores": {t: round(s, 6) for t, s in scores.items()}}
