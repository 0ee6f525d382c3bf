"""A README model card for every run folder: what was learned, how to prompt, how to load."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..models.families import SDXL, family_named


CARD = """---
base_model: {base_model}
library_name: diffusers
tags: [lora, unziplora, {hub_tag}, text-to-image]
---
# {name}: content and style LoRAs from one image

![input](thumbnail.png){preview}

Decomposed by [unziplora](https://arxiv.org/abs/2412.04465) with **{method}** from one image of a
**{subject}** in **{style_phrase}** style: {steps} steps, rank {rank}, seed {seed}.

{export}

| LoRA | file | trigger | example prompt |
|---|---|---|---|
| content (the subject, without its look) | `content_lora/pytorch_lora_weights.safetensors` | `{identifier} {subject}` | `A {identifier} {subject} on the beach` |
| style (the look, without the subject) | `style_lora/pytorch_lora_weights.safetensors` | `in {style} style` | `A truck in {style} style` |

{together}

    unziplora generate "{path}" --mode both --prompt "A <c> {subject} in <s> style in a boat"

## diffusers

```python
import torch
from diffusers import {pipeline}

device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = {pipeline}.from_pretrained(
    "{base_model}", dtype=torch.{cuda_dtype} if device == "cuda" else torch.float32).to(device)
pipe.load_lora_weights("{path}/content_lora", adapter_name="content")
settings = dict(height={resolution}, width={resolution}, num_inference_steps={sample_steps}, guidance_scale={guidance}{rescale})
image = pipe("A {identifier} {subject} on the beach", **settings).images[0]
pipe.load_lora_weights("{path}/style_lora", adapter_name="style")  # both, by plain addition
pipe.set_adapters(["content", "style"], adapter_weights=[1.0, 1.0])
image = pipe("A {identifier} {subject} in {style} style", **settings).images[0]
```

## ComfyUI and AUTOMATIC1111

Export kohya-format files first: `unziplora export "{path}" --format kohya` writes
`{path}/export/kohya/{name}_content.safetensors` and `..._style.safetensors`.
- ComfyUI: copy them to `models/loras/`, add a *LoraLoader* node (strength 1.0) after the {title} checkpoint.
- AUTOMATIC1111 / Forge: copy them to `models/Lora/` and prompt
  `A {identifier} {subject} on the beach <lora:{name}_content:1>` or
  `A truck in {style} style <lora:{name}_style:1>`.

Files: {files}`manifest.json` (prompts, config, versions, timings), `config.yaml` (reusable
with `--config`).
"""

def write_model_card(folder: Path, manifest, thumbnail: Image.Image, final_path: str | Path, card,
                     pipeline: str = "StableDiffusionXLPipeline") -> Path:
    """Write folder/README.md and folder/thumbnail.png (the input, at most 256 px). `card` is the
    method's text (methods/base.py `ModelCardText`: what each file holds, how "both" combines them).

    `final_path` is where the run folder will be (the card is written before the rename); the
    card's commands and code use it as an absolute path, so they work from any directory.
    """
    thumb = thumbnail.copy()
    thumb.thumbnail((256, 256))
    thumb.save(folder / "thumbnail.png")
    p, cfg = manifest.prompts, manifest.config
    export, together, files = card.exports, card.together, card.files
    final_path = Path(final_path).resolve()
    sample = cfg.sample
    family = family_named(pipeline) or SDXL
    # guidance_rescale is CFG rescale: only a pipeline with a CFG batch takes it (FluxPipeline does not)
    rescale = f",\n                guidance_rescale={sample.guidance_rescale}" if family.cfg else ""
    card = (card.template or CARD).format(
        cuda_dtype=family.cuda_dtype, rescale=rescale, title=family.title, hub_tag=family.hub_tag,
        guidance_rescale=sample.guidance_rescale,
        name=final_path.name, path=final_path.as_posix(), method=manifest.method.value, pipeline=pipeline,
        resolution=sample.resolution or cfg.train.resolution, sample_steps=sample.steps,
        guidance=sample.guidance_scale, export=export, together=together,
        files=files, base_model=manifest.base_model, subject=p.subject, style=p.style_words,
        style_phrase=cfg.prompts.style or p.style_words,
        identifier=p.identifier, steps=manifest.steps, rank=cfg.lora.rank, seed=manifest.seed,
        # the grid only where the run drew one (the baselines draw none; --no-preview skips it)
        preview=" ![preview](preview.png)" if (folder / "preview.png").is_file() else "",
    )
    path = folder / "README.md"
    path.write_text(card)
    return path
