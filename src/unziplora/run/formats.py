"""The LoRA file formats `export` writes, named where the CLI can read them without loading torch."""

EXPORT_FORMATS = ("diffusers", "kohya")  # diffusers / PEFT keys; kohya / webui keys (ComfyUI, A1111)
