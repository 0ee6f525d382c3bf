"""A synthetic content x style world with known ground truth.

Subjects (shape classes with instance parameters) are rendered in styles (pattern
families with instance parameters and palettes); ``split`` fixes which combinations
and instances pretraining may see, and ``oracles`` measure content / style
similarity exactly enough to benchmark content-style separation.
"""

from .oracles import (
    ContentEmbedding,
    StyleEmbedding,
    classify_content,
    classify_style,
    content_embedding,
    content_similarity,
    foreground_mask,
    style_embedding,
    style_similarity,
)
from .render import Pose, render, render_array, subject_polygons
from .split import (
    HELDOUT_COMBOS,
    SEEN_COMBOS,
    STYLE_FG_HUE_BAND,
    STYLE_SPACING_BAND,
    SUBJECT_A_BAND,
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
from .world import (
    CLASSES,
    FAMILIES,
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
    "CLASSES", "FAMILIES", "RARE_TOKENS", "SUBJECT_PARAMS", "WORLD_WORDS",
    "Subject", "Style", "Pose", "PretrainSample", "ContentEmbedding", "StyleEmbedding",
    "caption", "content_caption", "style_caption", "caption_words", "hue_of", "sample_palette",
    "render", "render_array", "subject_polygons",
    "SEEN_COMBOS", "HELDOUT_COMBOS", "SUBJECT_A_BAND", "STYLE_SPACING_BAND", "STYLE_FG_HUE_BAND",
    "is_seen_subject", "is_heldout_subject", "is_seen_style", "is_heldout_style",
    "pretraining_sample", "heldout_subject", "heldout_style", "heldout_subjects",
    "heldout_styles", "heldout_images",
    "content_similarity", "style_similarity", "content_embedding", "style_embedding",
    "foreground_mask", "classify_content", "classify_style",
]
