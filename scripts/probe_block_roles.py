#!/usr/bin/env python
"""Measure the embedded base model's block roles (B-LoRA's probe) and write its profile.

    python scripts/probe_block_roles.py [--model DIR] [--images 4] [--steps 300]

Writes DIR/unziplora_profile.yaml (used by --profile auto) and DIR/block_roles.md (the evidence).
"""

import argparse
import json
from pathlib import Path

import torch
import yaml

from unziplora.config import SampleConfig
from unziplora.demo import EMBEDDED_MODEL
from unziplora.methods.single_lora import SingleLoraSpec
from unziplora.models import load_pipeline
from unziplora.toyworld import heldout_images
from unziplora.toyworld.model_files import write_checksums
from unziplora.toyworld.probe import GroupScore, assign_roles, average, markdown_table, probe_image, profile_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--from-log", help="re-derive roles from the per-image lines a previous probe printed")
    args = parser.parse_args()
    model = Path(args.model)
    per_image = []
    if args.from_log:  # lines "<class> <family> {json}"
        for line in Path(args.from_log).read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[2].startswith("{"):
                per_image.append([GroupScore(g, c, s) for g, (c, s) in json.loads(parts[2]).items()])
    else:
        pipe = load_pipeline(str(model))
        sample = SampleConfig(steps=25, guidance_scale=5.0, seeds=[0, 1000, 111, 1234])
        for subject, style, image in heldout_images(args.images, 64):
            spec = SingleLoraSpec("A sks", rank=args.rank, steps=args.steps, lr=args.lr, resolution=64)
            scores = probe_image(pipe, image, "sks", spec, sample)
            per_image.append(scores)
            print(subject.cls, style.family,
                  json.dumps({s.group: (round(s.content_gain, 3), round(s.style_gain, 3)) for s in scores}))
    mean = average(per_image)
    roles = assign_roles(mean)
    table = markdown_table(mean, roles)
    profile = profile_dict("toyworld-sdxl", roles, "Embedded toy-world base model; roles measured by scripts/probe_block_roles.py")
    (model / "unziplora_profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    settings = f"{len(per_image)} held-out images, LoRA rank {args.rank}, {args.steps} steps, lr {args.lr}, prompt 'A sks', 4 seeds x 25 steps, CFG 5"
    (model / "block_roles.md").write_text(
        "# Block roles of the embedded base model\n\n"
        "B-LoRA's probe (arXiv 2403.14572): one LoRA per image on every attention module; keep ONE group's part; "
        "generate; gain = oracle similarity to the input minus the no-LoRA floor.\n\n"
        f"Settings: {settings}.\n\n{table}\n"
    )
    write_checksums(model)  # the profile and evidence are part of the model folder
    print(table)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
