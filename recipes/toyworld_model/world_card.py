"""The toy world's card: every family on every class at 64 px, and the oracles' validation table.

    python -m recipes.toyworld_model.world_card [--grid docs/toyworld.png] [--json research/toyworld_v2_pilot/results/oracles.json]

The grid has one row per fill family and one column per shape class, each tile 64 px (upscaled
3x without smoothing): held-out subjects, and per row one style drawn over the world's full
ranges, so that each row shows one style on every subject and the rows show the palettes' range. The
table measures the oracles as tests/unit/test_oracles.py does (same instances, pairs and seeds):
same-vs-different ROC AUC on held-out instances (all negatives, and same-class / same-family
negatives only), the AUC of "the other factor is the same" (0.5 = the oracle ignores it),
classifier accuracy on clean held-out renders, and palette distances of same and other palettes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unziplora.toyworld import (
    CLASSES,
    FAMILIES,
    content_embedding,
    content_similarity,
    heldout_styles,
    heldout_subject,
    heldout_subjects,
    palette_distance,
    palette_of,
    render,
    Style,
    render_array,
    style_embedding,
    style_similarity,
)
from unziplora.toyworld.validation import classifier_accuracy, leak, separation

N, REPEATS = 32, 3  # as in tests/unit/test_oracles.py
GRID_SEED = 4


def family_grid(size: int = 64, zoom: int = 3, label_width: int = 80) -> Image.Image:
    """Rows: families; columns: classes (held-out subject 0 of each); one style per row."""
    rows = []
    for r, family in enumerate(FAMILIES):
        style = Style.sample(np.random.default_rng([GRID_SEED, r]), family=family)
        rows.append(np.concatenate([render_array(heldout_subject(0, c), style, size, seed=100 * r + i)
                                    for i, c in enumerate(CLASSES)], axis=1))
    grid = np.concatenate(rows, axis=0)
    big = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST)
    card = Image.new("RGB", (big.width + label_width, big.height + 16), "white")
    card.paste(big, (label_width, 16))
    draw = ImageDraw.Draw(card)
    for r, family in enumerate(FAMILIES):
        draw.text((4, 16 + (r + 0.45) * size * zoom), family, fill="black")
    for i, cls in enumerate(CLASSES):
        draw.text((label_width + (i + 0.3) * size * zoom, 2), cls, fill="black")
    return card


def oracle_table() -> dict:
    subjects, styles = heldout_subjects(N), heldout_styles(N)
    content = [[content_embedding(render(s, styles[(5 * i + 11 * r) % N], 64, seed=100 * i + r))
                for r in range(REPEATS)] for i, s in enumerate(subjects)]
    style = [[style_embedding(render(subjects[(3 * j + 7 * r) % N], t, 64, seed=100 * j + r + 7))
              for r in range(REPEATS)] for j, t in enumerate(styles)]
    c_auc, c_hard = separation(subjects, content, lambda a, b: a.cls == b.cls, content_similarity)
    s_auc, s_hard = separation(styles, style, lambda a, b: a.family == b.family, style_similarity)

    rng = np.random.default_rng(1)

    def content_triple(k):
        a, b = rng.choice(N, 2, replace=False)
        return [render(subjects[k % N], styles[j], 64, seed=int(rng.integers(1 << 30))) for j in (a, a, b)]

    c_leak = leak(2 * N, content_triple, content_embedding, content_similarity)
    rng = np.random.default_rng(2)

    def style_triple(k):
        a, b = rng.choice(N, 2, replace=False)
        return [render(subjects[j], styles[k % N], 64, seed=int(rng.integers(1 << 30))) for j in (a, a, b)]

    s_leak = leak(4 * N, style_triple, style_embedding, style_similarity)
    class_acc, family_acc = classifier_accuracy(subjects, styles)
    same_palette = [palette_distance(palette_of(render(subjects[j], t, 64, seed=j)),
                                     palette_of(render(subjects[(j + 5) % N], t, 64, seed=j + 1)))
                    for j, t in enumerate(styles)]
    other_palette = [palette_distance(palette_of(render(subjects[j], t, 64, seed=j)),
                                      palette_of(render(subjects[j], styles[(j + 1) % N], 64, seed=j)))
                     for j, t in enumerate(styles)]
    return {
        "content": {"auc": c_auc, "auc_same_class_negatives": c_hard, "auc_style_differs_only": c_leak,
                    "classify_accuracy": class_acc},
        "style": {"auc": s_auc, "auc_same_family_negatives": s_hard, "auc_subject_differs_only": s_leak,
                  "classify_accuracy": family_acc},
        "palette_distance": {"same_palette_other_subject": {"median": float(np.median(same_palette)),
                                                            "max": float(np.max(same_palette))},
                             "other_palette": {"median": float(np.median(other_palette)),
                                               "min": float(np.min(other_palette))}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="docs/toyworld.png")
    parser.add_argument("--json", default="research/toyworld_v2_pilot/results/oracles.json")
    args = parser.parse_args()
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    family_grid().save(args.grid)
    print(f"wrote {args.grid}")
    table = oracle_table()
    print("| oracle | AUC (all negatives) | AUC (same class / family negatives) | AUC (only the other factor differs) "
          "| classifier accuracy |\n|---|---|---|---|---|")
    for name, key, other in (("content", "auc_same_class_negatives", "auc_style_differs_only"),
                             ("style", "auc_same_family_negatives", "auc_subject_differs_only")):
        row = table[name]
        print(f"| {name} | {row['auc']:.3f} | {row[key]:.3f} | {row[other]:.3f} | {row['classify_accuracy']:.1%} |")
    pd = table["palette_distance"]
    print(f"palette_distance: same palette, other subject median {pd['same_palette_other_subject']['median']:.1f} "
          f"(max {pd['same_palette_other_subject']['max']:.1f}); other palette median "
          f"{pd['other_palette']['median']:.1f} (min {pd['other_palette']['min']:.1f})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
