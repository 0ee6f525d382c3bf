"""unziplora: split one image into a content LoRA and a style LoRA (arXiv 2412.04465)."""
__version__ = "0.1.0"
