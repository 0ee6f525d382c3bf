"""The world v2 pilot's judgement of one model (research/toyworld_v2_pilot/README.md).

    python -m research.toyworld_v2_pilot.pilot --model DIR [--json FILE] [--grid FILE] [--images 6]

1. Family and class: 2 samples of every seen combo, judged by the learned family judge and the
   content oracle.
2. Palette: a one-image DreamBooth-LoRA on each of N held-out images, 4 seeds of its training
   prompt, palette_distance to the input; against the renders of the same style (the threshold's
   ceiling) and the base model without LoRA (the floor).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SEEDS = (0, 1000, 111, 1234)
STEPS = {"sampling": 30}  # --sample-steps changes it (a smoke run)


def sample(pipe, prompt: str, seeds, guidance_rescale: float, cfg: float = 5.0) -> list:
    return [pipe(prompt, num_inference_steps=STEPS["sampling"], guidance_scale=cfg, guidance_rescale=guidance_rescale,
                 height=64, width=64, generator=torch.Generator().manual_seed(int(s))).images[0] for s in seeds]


def judge_families_of_seen_combos(pipe, per_combo: int, guidance_rescale: float) -> tuple[dict, list]:
    from unziplora.toyworld import SEEN_COMBOS, classify_content
    from unziplora.toyworld.family_judge import judge_families

    labelled, shown = [], []
    for i, (cls, fam) in enumerate(SEEN_COMBOS):
        images = sample(pipe, f"A {cls} in {fam} style", [1000 * i + k for k in range(per_combo)], guidance_rescale)
        labelled += [(img, cls, fam) for img in images]
    named = judge_families([img for img, _, _ in labelled])
    by_family: dict[str, list[bool]] = {}
    right_class = right_family = 0
    for (img, cls, fam), got in zip(labelled, named):
        right_class += classify_content(img) == cls
        right_family += got == fam
        by_family.setdefault(fam, []).append(got == fam)
    n = len(labelled)
    return ({"images": n, "class_acc": right_class / n, "family_acc": right_family / n,
             "family_acc_by_family": {k: float(np.mean(v)) for k, v in sorted(by_family.items())}},
            [img for img, _, _ in labelled])


def palette_hold(pipe, n_images: int, guidance_rescale: float, steps: int) -> tuple[list[dict], list]:
    from unziplora.methods.single_lora import SingleLoraSpec, train_single_lora
    from unziplora.toyworld import CLASSES, heldout_images, palette_distance, render

    rows, tiles = [], []
    for subject, style, image in heldout_images(n_images, 64):
        prompt = f"A monadikos {subject.cls} in {style.family} style"
        others = [c for c in CLASSES if c != subject.cls]
        renders = [render(subject if k % 2 else type(subject)(others[k % len(others)]), style, 64, seed=50 + k)
                   for k in range(20)]
        ceiling = float(np.percentile([palette_distance(r, image) for r in renders], 95))
        floor_images = sample(pipe, f"A {subject.cls} in {style.family} style", SEEDS, guidance_rescale)
        floor = float(np.median([palette_distance(i, image) for i in floor_images]))
        t0 = time.perf_counter()
        state = train_single_lora(pipe, image, SingleLoraSpec(prompt, rank=16, steps=steps, lr=1e-3, resolution=64),
                                  pipe.unet.device)
        train_s = time.perf_counter() - t0
        pipe.load_lora_weights({f"unet.{k}": v for k, v in state.items()}, adapter_name="pilot")
        outputs = sample(pipe, prompt, SEEDS, guidance_rescale)
        pipe.delete_adapters("pilot")
        distances = [palette_distance(o, image) for o in outputs]
        threshold = max(ceiling, 0.5 * floor)
        rows.append({"subject": subject.cls, "family": style.family, "palette_distance": distances,
                     "median": float(np.median(distances)), "ceiling_p95": ceiling, "floor_median": floor,
                     "threshold": threshold, "holds": bool(np.median(distances) <= threshold), "train_s": train_s})
        print(json.dumps(rows[-1]), flush=True)
        tiles.append([image, *outputs, *floor_images[:1]])
    return rows, tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--per-combo", type=int, default=2)
    parser.add_argument("--lora-steps", type=int, default=600)
    parser.add_argument("--guidance-rescale", type=float, default=0.7)
    parser.add_argument("--skip-palette", action="store_true")
    parser.add_argument("--sample-steps", type=int, default=30)
    parser.add_argument("--json", default="research/toyworld_v2_pilot/results/pilot.json")
    parser.add_argument("--grid", default="research/toyworld_v2_pilot/results/pilot_grid.png")
    args = parser.parse_args()
    from unziplora.models.loading import load_pipeline
    from unziplora.run.folder import save_grid

    torch.manual_seed(0)
    STEPS["sampling"] = args.sample_steps
    pipe = load_pipeline(args.model)
    families, seen = judge_families_of_seen_combos(pipe, args.per_combo, args.guidance_rescale)
    print(json.dumps(families), flush=True)
    report = {"model": args.model, "settings": vars(args), "family": families}
    tiles = seen[:36]  # six rows of the seen-combo samples
    if not args.skip_palette:
        rows, palette_tiles = palette_hold(pipe, args.images, args.guidance_rescale, args.lora_steps)
        report["palette"] = {"images": rows, "holding": sum(r["holds"] for r in rows)}
        tiles += [t for row in palette_tiles for t in row]
    report["bar"] = {"family_acc >= 0.60": families["family_acc"] >= 0.6,
                     "palette held on >= 4 of 6": report.get("palette", {}).get("holding", 0) >= 4}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    save_grid([t.resize((64, 64)) for t in tiles], Path(args.grid), columns=6)
    print(json.dumps(report["bar"]))


if __name__ == "__main__":
    main()
