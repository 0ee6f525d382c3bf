#!/usr/bin/env python
"""Quality of the embedded base model, judged by the world's oracles.

For every (class, family) combo, seen in pretraining or held out, generate images with
"A {class} in {family} style" and count how often the content oracle names the right class
and the style oracle the right family. A first row scores the VAE's reconstructions of fresh
renders (encode, decode): samples cannot be better than what the VAE can draw. Prints a
table, writes JSON.

    python benchmarks/base_model_quality.py [--per-combo 4] [--steps 30] [--json FILE]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from unziplora.demo import EMBEDDED_MODEL
from unziplora.models import load_pipeline
from unziplora.toyworld import HELDOUT_COMBOS, SEEN_COMBOS, classify_content, classify_style


def tally(labelled) -> dict:
    """Oracle accuracy over (image, true class, true family) triples."""
    right_class = right_family = both = 0
    for image, cls, fam in labelled:
        c, f = classify_content(image) == cls, classify_style(image) == fam
        right_class, right_family, both = right_class + c, right_family + f, both + (c and f)
    n = len(labelled)
    return {"images": n, "class_acc": right_class / n, "family_acc": right_family / n, "both_acc": both / n}


@torch.no_grad()
def judge(pipe, combos, per_combo: int, steps: int, guidance: float, seed: int) -> dict:
    labelled = []
    for i, (cls, fam) in enumerate(combos):
        images = pipe(f"A {cls} in {fam} style", num_images_per_prompt=per_combo, num_inference_steps=steps,
                      guidance_scale=guidance, height=64, width=64,
                      generator=torch.Generator().manual_seed(seed + i)).images
        labelled += [(image, cls, fam) for image in images]
    return tally(labelled)


@torch.no_grad()
def judge_vae(pipe, n: int, seed: int) -> dict:
    """Oracle accuracy on VAE reconstructions of n renders from the pretraining distribution."""
    from unziplora.toyworld.render import render_array
    from unziplora.toyworld.split import pretraining_sample

    rng = np.random.default_rng(seed)
    samples = [pretraining_sample(rng) for _ in range(n)]
    arrays = np.stack([render_array(s.subject, s.style, 64, s.seed) for s in samples])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae = pipe.vae
    recon = vae.decode(vae.encode(pixels.to(vae.dtype)).latent_dist.mean).sample.float()
    arrays = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return tally([(a, s.subject.cls, s.style.family) for s, a in zip(samples, arrays)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--per-combo", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/base_model_quality.json")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    t0 = time.perf_counter()
    results = {"VAE reconstructions": judge_vae(pipe, 128, args.seed)}
    results |= {name: judge(pipe, combos, args.per_combo, args.steps, args.guidance, args.seed)
               for name, combos in (("seen combos", SEEN_COMBOS), ("held-out combos", HELDOUT_COMBOS))}
    print("| combos | images | right class | right family | both |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images']} | {r['class_acc']:.1%} | {r['family_acc']:.1%} | {r['both_acc']:.1%} |")
    print(f"({time.perf_counter() - t0:.0f} s; {args.steps} steps, CFG {args.guidance}, {args.per_combo} images per combo)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "settings": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    np.random.seed(0)
    main()
