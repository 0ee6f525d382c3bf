"""unziplora: split one image into a content LoRA and a style LoRA (UnZipLoRA, arXiv 2412.04465).

The Python API: `from unziplora.api import decompose, generate, resolve_config` (api.py).
"""

__version__ = "0.1.0"
