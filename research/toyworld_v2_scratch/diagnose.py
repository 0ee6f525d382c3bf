"""Two pictures of a training checkpoint: what the UNet draws, and how the VAE's latents behave.

    python -m research.toyworld_v2_scratch.diagnose --workdir W --out research/toyworld_v2_scratch/results

- samples_step<N>.png: the EMA weights' samples of 16 seen combos (the model's own sampling settings).
- vae_latents.png, rows: renders; their reconstructions; reconstructions of latents with Gaussian
  noise of 0.1, 0.3 and 0.6 (in units of the scaled latents); the decoded mean of two images'
  latents; the mean of the two images' pixels; a 3x3-blurred latent decoded. If averaging latents
  decoded to other colours than averaging pixels, an undertrained UNet's blurry predictions would
  come out many-coloured because of the VAE; the rows say whether they do.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recipes.toyworld_model.curve import SAMPLING, ema_pipeline
from recipes.toyworld_model.data import render_batch
from recipes.toyworld_model.pretrain import PretrainConfig, Pretrainer
from unziplora.toyworld import SEEN_COMBOS


def _grid(rows: list[list[np.ndarray]], path: Path) -> None:
    grid = Image.new("RGB", (64 * len(rows[0]), 64 * len(rows)))
    for r, row in enumerate(rows):
        for i, a in enumerate(row):
            grid.paste(Image.fromarray(a), (i * 64, r * 64))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def _arrays(batch: torch.Tensor) -> list[np.ndarray]:
    return list(((batch.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    trainer = Pretrainer(PretrainConfig(threads=1), Path(args.workdir))
    pipe = ema_pipeline(trainer)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"A {c} in {f} style" for c, f in SEEN_COMBOS[::3][:16]]
    images = pipe(prompts, height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="np",
                  **SAMPLING).images
    images = [(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in images]
    _grid([images[:8], images[8:]], out / f"samples_step{trainer.step}.png")
    vae = trainer.c["vae"].eval()
    pixels, _ = render_batch(np.random.default_rng(5), 8, 64)
    latents = vae.encode(pixels).latent_dist.mean
    rows = [pixels, vae.decode(latents).sample]
    for sigma in (0.1, 0.3, 0.6):
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        rows.append(vae.decode(latents + noise * sigma / vae.config.scaling_factor).sample)
    rows += [vae.decode((latents + latents.roll(1, 0)) / 2).sample, (pixels + pixels.roll(1, 0)) / 2,
             vae.decode(torch.nn.functional.avg_pool2d(latents, 3, 1, 1)).sample]
    _grid([_arrays(r) for r in rows], out / "vae_latents.png")


if __name__ == "__main__":
    main()
