"""The tiny pipelines tests build from configs (random weights, tokenizers built in code, offline).

The SDXL-shaped builder is the embedded model's own architecture (recipes/toyworld_model/architecture.py).
"""

from recipes.toyworld_model.architecture import (  # noqa: F401 (re-exported for the tests)
    DEFAULT_WORDS,
    TinySDXLSpec,
    build_clip_tokenizer,
    save_tiny_sdxl_pipeline,
    tiny_sdxl_components,
)
