"""Train the learned family judge (src/unziplora/toyworld/family_judge.py) and validate it.

    python -m recipes.toyworld_model.family_judge [--out src/unziplora/assets/family_judge.safetensors] [--steps 1200]

Trains on renders only (never on generated images), then prints how often it names the family
of renders it never saw -- clean, blurred like a decoder's output, and held-out style instances
-- next to the analytic classify_style, and writes the table to
research/toyworld_v2_pilot/results/family_judge.json. About 15 minutes on 2 CPU cores; the
shipped file records its recipe in its metadata.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from PIL import Image, ImageFilter
from tqdm import tqdm

from unziplora.toyworld import FAMILIES, classify_style, heldout_images, pretraining_sample, render_array
from unziplora.toyworld import family_judge
from unziplora.toyworld.family_judge import WIDTHS, FamilyJudgeNet, prepare
from unziplora.toyworld.world import CLASSES, Style, Subject

BLUR_SIGMAS = (0.0, 0.0, 0.4, 0.7, 1.0, 1.3)  # px; one per slice of a batch (a decoder's softness)

BLURS = (0.0, 0.8, 1.2)  # px, PIL Gaussian radius: clean, and as soft as a small decoder's output


def training_renders(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders over the world's full ranges, families and classes cycled so that each family
    appears equally often and never with one class; (uint8 N x 64 x 64 x 3, family indices)."""
    rng = np.random.default_rng([seed, 0xFA])
    images, labels = [], []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        subject = Subject.sample(rng, cls=CLASSES[int(rng.integers(len(CLASSES)))])
        images.append(render_array(subject, Style.sample(rng, family=family), 64, int(rng.integers(1 << 30))))
        labels.append(FAMILIES.index(family))
    return np.stack(images), np.array(labels)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, H, W) batch, edges replicated."""
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a decoder may do to a render without changing its family: blur (one sigma per slice
    of the batch), contrast lowered to 60-100 %, pixel noise up to 4 % of the range; and colour
    channels permuted, since a family is not a colour."""
    n = x.shape[0]
    perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(n)])
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    x = x * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator))
    slices = torch.randperm(n, generator=generator).chunk(len(BLUR_SIGMAS))
    for sigma, idx in zip(BLUR_SIGMAS, slices):
        x[idx] = gaussian_blur(x[idx], sigma)
    noise = 0.04 * torch.rand(n, 1, 1, 1, generator=generator)
    return x + noise * torch.randn(x.shape, generator=generator)


def train(steps: int = 1200, batch: int = 128, pool: int = 24000, lr: float = 3e-3, seed: int = 0,
          progress=None) -> tuple[FamilyJudgeNet, dict]:
    """Train a judge on `pool` renders, each batch freshly augmented; AdamW with a one-cycle
    schedule. `progress(step, loss)` is called every 50 steps. Returns (net in eval mode, recipe)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = training_renders(pool, seed)
    x_all, y_all = prepare(images), torch.from_numpy(labels)
    net = FamilyJudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch,), generator=generator)
        loss = F.cross_entropy(net(augment(x_all[idx], generator)), y_all[idx])  # indexing copies
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % 50 == 0 or step == steps):
            progress(step, loss.item())
    recipe = {"script": "python -m recipes.toyworld_model.family_judge", "steps": steps, "batch": batch, "pool": pool, "lr": lr,
              "seed": seed, "widths": list(WIDTHS), "families": list(FAMILIES), "blur_sigmas": list(BLUR_SIGMAS)}
    return net.eval(), recipe


def save(net: FamilyJudgeNet, recipe: dict, path: Path) -> None:
    """fp16 safetensors with the recipe in the metadata, written to a temp file and renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"recipe": json.dumps(recipe)})
    tmp.replace(path)


def validation_sets(n: int, seed: int) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """Renders the judge never saw: pretraining draws at each blur, and held-out instances."""
    rng = np.random.default_rng([seed, 0x7A1])
    draws = [pretraining_sample(rng) for _ in range(n)]
    clean = [render_array(s.subject, s.style, 64, s.seed) for s in draws]
    truth = [s.style.family for s in draws]
    sets = {}
    for radius in BLURS:
        images = clean if radius == 0 else [np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)))
                                            for a in clean]
        sets[f"pretraining draws, blur {radius} px"] = (images, truth)
    heldout = heldout_images(n)
    sets["held-out instances"] = ([np.asarray(img) for _, _, img in heldout], [t.family for _, t, _ in heldout])
    return sets


def accuracy_table(net, n: int, seed: int) -> dict:
    table = {}
    for name, (images, truth) in validation_sets(n, seed).items():
        learned = family_judge.judge_families(images, net)
        table[name] = {"images": len(images),
                       "learned": float(np.mean([a == b for a, b in zip(learned, truth)])),
                       "analytic": float(np.mean([classify_style(img) == t for img, t in zip(images, truth)])),
                       "learned_by_family": {f: float(np.mean([a == f for a, t in zip(learned, truth) if t == f]))
                                             for f in FAMILIES}}
    return table


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(family_judge.JUDGE_FILE))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--pool", type=int, default=24000, help="renders to train on (2 ms each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--validate", type=int, default=512, help="images per validation set")
    parser.add_argument("--only-validate", action="store_true", help="judge the file at --out, train nothing")
    parser.add_argument("--json", default="research/toyworld_v2_pilot/results/family_judge.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.only_validate:
        net = family_judge.load(Path(args.out))
    else:
        bar = tqdm(total=args.steps, desc="family judge", unit="step")

        def progress(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        net, recipe = train(steps=args.steps, pool=args.pool, seed=args.seed, progress=progress)
        bar.close()
        save(net, recipe, Path(args.out))
        seconds = time.perf_counter() - t0
        print(f"wrote {args.out} ({seconds:.0f} s)")
    table = accuracy_table(net, args.validate, args.seed + 1)
    print("| renders | images | learned judge | analytic classify_style |\n|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['images']} | {row['learned']:.1%} | {row['analytic']:.1%} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {**vars(args), "out": _shown(args.out)}  # no machine's absolute paths in a results file
    record = {"judge": _shown(args.out), "settings": settings, "validation": table}
    if not args.only_validate:
        record["training_seconds"] = round(seconds)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
