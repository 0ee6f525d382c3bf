"""A synthetic content x style world with known ground truth.

Subjects (shape classes with instance parameters) are rendered in styles: a palette
(background, primary and secondary colours) and one of eight fill families whose structure
is at the scale of the subject (solid, gradient, radial, split, rim, bands, bullseye,
quadrants; see FAMILY_FILLS). ``WorldSpec`` holds every range and held-out region and is
passed in (``spec=WORLD_SPEC`` by default); ``split`` fixes which combinations and instances
pretraining may see; the oracles measure content similarity (the silhouette), style
similarity (palette and family) and palette distance exactly enough to benchmark
content-style separation; ``family_judge`` is a learned family classifier for generated images.
"""

from .fills import fill_field
from .oracles import (
    ContentEmbedding,
    classify_content,
    content_embedding,
    content_similarity,
    foreground_mask,
)
from .render import Pose, render, render_array, subject_polygons
from .spec import WORLD_SPEC, WorldSpec
from .split import (
    HELDOUT_COMBOS,
    SEEN_COMBOS,
    PretrainSample,
    heldout_images,
    heldout_style,
    heldout_styles,
    heldout_subject,
    heldout_subjects,
    is_heldout_style,
    is_heldout_subject,
    is_seen_style,
    is_seen_subject,
    pretraining_sample,
)
from .style_oracle import (
    Palette,
    StyleEmbedding,
    classify_style,
    palette_distance,
    palette_of,
    style_embedding,
    style_similarity,
)
from .world import (
    CLASSES,
    FAMILIES,
    FAMILY_FILLS,
    RARE_TOKENS,
    SUBJECT_PARAMS,
    WORLD_WORDS,
    Style,
    Subject,
    caption,
    caption_words,
    content_caption,
    hue_of,
    sample_palette,
    style_caption,
)

__all__ = [
    "CLASSES", "FAMILIES", "FAMILY_FILLS", "RARE_TOKENS", "SUBJECT_PARAMS", "WORLD_WORDS",
    "WorldSpec", "WORLD_SPEC",
    "Subject", "Style", "Pose", "PretrainSample", "ContentEmbedding", "StyleEmbedding", "Palette",
    "caption", "content_caption", "style_caption", "caption_words", "hue_of", "sample_palette",
    "render", "render_array", "subject_polygons", "fill_field",
    "SEEN_COMBOS", "HELDOUT_COMBOS",
    "is_seen_subject", "is_heldout_subject", "is_seen_style", "is_heldout_style",
    "pretraining_sample", "heldout_subject", "heldout_style", "heldout_subjects",
    "heldout_styles", "heldout_images",
    "content_similarity", "style_similarity", "content_embedding", "style_embedding",
    "foreground_mask", "classify_content", "classify_style", "palette_of", "palette_distance",
]
