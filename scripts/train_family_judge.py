#!/usr/bin/env python
"""Train the learned family judge (src/unziplora/toyworld/family_judge.py) and validate it.

    python scripts/train_family_judge.py [--out src/unziplora/assets/family_judge.safetensors] [--steps 2400]

Trains on renders only (never on generated images), then prints how often it names the family
of renders it never saw -- clean, blurred like a decoder's output, and held-out style instances
-- next to the analytic classify_style, and writes the table to benchmarks/results/family_judge.json.
About 26 minutes on 2 CPU cores; the shipped file records its recipe in its metadata.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from tqdm import tqdm

from unziplora.toyworld import FAMILIES, classify_style, heldout_images, pretraining_sample, render_array
from unziplora.toyworld import family_judge

BLURS = (0.0, 0.8, 1.2)  # px, PIL Gaussian radius: clean, and as soft as a small decoder's output


def validation_sets(n: int, seed: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Renders the judge never saw: pretraining draws at each blur, and held-out instances."""
    rng = np.random.default_rng([seed, 0x7A1])
    draws = [pretraining_sample(rng) for _ in range(n)]
    clean = [render_array(s.subject, s.style, 64, s.seed) for s in draws]
    truth = [s.style.family for s in draws]
    sets = {}
    for radius in BLURS:
        images = clean if radius == 0 else [np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)))
                                            for a in clean]
        sets[f"pretraining draws, blur {radius} px"] = (images, truth)
    heldout = heldout_images(n)
    sets["held-out instances"] = ([np.asarray(img) for _, _, img in heldout], [t.family for _, t, _ in heldout])
    return sets


def accuracy_table(net, n: int, seed: int) -> dict:
    table = {}
    for name, (images, truth) in validation_sets(n, seed).items():
        learned = family_judge.judge_families(images, net)
        table[name] = {"images": len(images),
                       "learned": float(np.mean([a == b for a, b in zip(learned, truth)])),
                       "analytic": float(np.mean([classify_style(img) == t for img, t in zip(images, truth)])),
                       "learned_by_family": {f: float(np.mean([a == f for a, t in zip(learned, truth) if t == f]))
                                             for f in FAMILIES}}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(family_judge.JUDGE_FILE))
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--pool", type=int, default=32000, help="renders to train on (2 ms each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--validate", type=int, default=512, help="images per validation set")
    parser.add_argument("--only-validate", action="store_true", help="judge the file at --out, train nothing")
    parser.add_argument("--json", default="benchmarks/results/family_judge.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.only_validate:
        net = family_judge.load(Path(args.out))
    else:
        bar = tqdm(total=args.steps, desc="family judge", unit="step")

        def progress(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        net, recipe = family_judge.train(steps=args.steps, pool=args.pool, seed=args.seed, progress=progress)
        bar.close()
        family_judge.save(net, recipe, Path(args.out))
        print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    table = accuracy_table(net, args.validate, args.seed + 1)
    print("| renders | images | learned judge | analytic classify_style |\n|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['images']} | {row['learned']:.1%} | {row['analytic']:.1%} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"judge": args.out, "settings": vars(args), "validation": table}, indent=2))


if __name__ == "__main__":
    main()
