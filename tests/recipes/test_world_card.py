"""The world's card: one row per family, one column per class, each tile a 64 px render."""

import numpy as np

from recipes.toyworld_model.world_card import family_grid
from unziplora.toyworld import CLASSES, FAMILIES, classify_style


def test_the_grid_shows_every_family_on_every_class():
    zoom, label = 1, 40
    card = family_grid(size=64, zoom=zoom, label_width=label)
    assert card.size == (label + 64 * len(CLASSES), 16 + 64 * len(FAMILIES))
    tiles = np.asarray(card)[16:, label:]
    for r, family in enumerate(FAMILIES):
        named = [classify_style(tiles[64 * r:64 * (r + 1), 64 * c:64 * (c + 1)]) for c in range(len(CLASSES))]
        assert sum(n == family for n in named) >= 6, (family, named)  # thin subjects may hide a part
