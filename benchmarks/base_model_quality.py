#!/usr/bin/env python
"""Quality of the embedded base model, judged by the world's oracles.

For every (class, family) combo, seen in pretraining or held out, generate images with
"A {class} in {family} style" and count how often the content oracle names the right class
and the learned family judge (toyworld/family_judge.py) the right family; the analytic
classify_style's verdict is kept beside it, as the ruler the earlier numbers used. Two first
rows score the fresh renders themselves (what the oracles get right of perfect images) and the
VAE's reconstructions of them (encode, decode): samples cannot be better than what the VAE can
draw. Prints a table, writes JSON.

    python benchmarks/base_model_quality.py [--per-combo 4] [--steps 30] [--json FILE] [--diagnose]
    python benchmarks/base_model_quality.py --vae VAE.safetensors   # a VAE file's ceiling (renders, reconstructions)

--diagnose adds rows that locate the weakness: the VAE's reconstructions with noise added to
the latents (is the decoder fragile?), samples of the seen combos started from the training
distribution at the first timestep instead of pure noise (a render's latent leaks through
sqrt(alpha_bar_T) = 0.068 in training; does the gap to pure noise at inference matter? arXiv
2305.08891, Sec. 3), and a table of the UNet's training loss per timestep with the right
caption, a wrong family word, a wrong class word and no caption (at which noise levels does the
UNet use which word?), what the family judge named each family instead, and whether the text
encoders tell the family words apart at all.
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from unziplora.data import sdxl_time_ids
from unziplora.demo import EMBEDDED_MODEL
from unziplora.errors import UnZipLoRAError
from unziplora.models import load_pipeline
from unziplora.toyworld import HELDOUT_COMBOS, SEEN_COMBOS, classify_content, classify_style
from unziplora.toyworld.family_judge import judge_families
from unziplora.toyworld.model_files import read_vae_file


def spacing_bins(n: int = 3) -> list[tuple[float, float]]:
    """n equal bins of the world's pattern periods (fraction of the canvas side), read at call
    time so that an experiment's other range (recipe_experiment.py --periods) is binned too."""
    from unziplora.toyworld import world

    edges = np.linspace(*world.SPACING_RANGE, n + 1)
    return list(zip(edges[:-1], edges[1:]))


def tally(labelled) -> dict:
    """Oracle accuracy over (image, true class, true family[, true pattern spacing]) tuples, with the
    family accuracy per family, what the family judge called each family instead, where the spacing
    is known (renders) the accuracy per spacing bin, and the analytic classify_style's family accuracy."""
    right_class = right_family = both = right_analytic = 0
    judged_as, by_spacing, bins = {}, {}, spacing_bins()
    for (image, cls, fam, *spacing), named in zip(labelled, judge_families(image for image, *_ in labelled)):
        c, f = classify_content(image) == cls, named == fam
        right_class, right_family, both = right_class + c, right_family + f, both + (c and f)
        right_analytic += classify_style(image) == fam
        judged_as.setdefault(fam, Counter())[named] += 1
        for low, high in bins if spacing else ():
            if low <= spacing[0] <= high:
                by_spacing.setdefault(f"{low:.2f}-{high:.2f}", []).append(f)
                break
    n = len(labelled)
    result = {"images": n, "class_acc": right_class / n, "family_acc": right_family / n, "both_acc": both / n,
              "family_acc_analytic": right_analytic / n,
              "family_acc_by_family": {k: v[k] / v.total() for k, v in sorted(judged_as.items())},
              "family_judged_as": {k: dict(v.most_common()) for k, v in sorted(judged_as.items())}}
    if by_spacing:
        result["family_acc_by_spacing"] = {k: sum(v) / len(v) for k, v in sorted(by_spacing.items())}
    return result


@torch.no_grad()
def judge(pipe, combos, per_combo: int, steps: int, guidance: float, seed: int) -> dict:
    labelled = []
    for i, (cls, fam) in enumerate(combos):
        images = pipe(f"A {cls} in {fam} style", num_images_per_prompt=per_combo, num_inference_steps=steps,
                      guidance_scale=guidance, height=64, width=64,
                      generator=torch.Generator().manual_seed(seed + i)).images
        labelled += [(image, cls, fam) for image in images]
    return tally(labelled)


def renders(samples) -> np.ndarray:
    from unziplora.toyworld.render import render_array

    return np.stack([render_array(s.subject, s.style, 64, s.seed) for s in samples])


def encode(vae, arrays: np.ndarray) -> torch.Tensor:
    """Scaled latents (the UNet's space) of uint8 HWC renders."""
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def pretraining_renders(n: int, seed: int) -> tuple[list, np.ndarray]:
    """n draws from the pretraining distribution and their renders."""
    from unziplora.toyworld.split import pretraining_sample

    rng = np.random.default_rng(seed)
    samples = [pretraining_sample(rng) for _ in range(n)]
    return samples, renders(samples)


def judge_renders(n: int, seed: int) -> dict:
    """Oracle accuracy on the renders themselves (the same draws as judge_vae's): what the oracles
    get right of perfect images, the ceiling above the VAE's."""
    samples, arrays = pretraining_renders(n, seed)
    return tally([(a, s.subject.cls, s.style.family, s.style.spacing) for s, a in zip(samples, arrays)])


@torch.no_grad()
def judge_vae(pipe, n: int, seed: int, latent_noise: float = 0.0) -> dict:
    """Oracle accuracy on VAE reconstructions of n renders from the pretraining distribution,
    optionally with Gaussian noise of std `latent_noise` added to the scaled latents."""
    samples, arrays = pretraining_renders(n, seed)
    vae = pipe.vae
    latents = encode(vae, arrays)
    latents = latents + latent_noise * torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    recon = vae.decode(latents / vae.config.scaling_factor).sample.float()
    arrays = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return tally([(a, s.subject.cls, s.style.family, s.style.spacing) for s, a in zip(samples, arrays)])


def seen_samples(per_combo: int, seed: int) -> dict:
    """per_combo pretraining draws for every seen combo (pretraining draws them all)."""
    from unziplora.toyworld.split import pretraining_sample

    rng, wanted = np.random.default_rng(seed), {tuple(c): [] for c in SEEN_COMBOS}
    while any(len(v) < per_combo for v in wanted.values()):
        s = pretraining_sample(rng)
        key = (s.subject.cls, s.style.family)
        if key in wanted and len(wanted[key]) < per_combo:
            wanted[key].append(s)
    return wanted


@torch.no_grad()
def judge_leaky_start(pipe, per_combo: int, steps: int, guidance: float, seed: int) -> dict:
    """Seen combos sampled from x_T = z_0 + sigma_max * noise (z_0: a render of the combo), the
    distribution the UNet saw at its last training timestep, with trailing timestep spacing so
    that sampling starts at that timestep."""
    from diffusers import EulerDiscreteScheduler

    original, pipe.scheduler = pipe.scheduler, EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                                  timestep_spacing="trailing")
    pipe.scheduler.set_timesteps(steps)
    sigma_max, init_sigma = float(pipe.scheduler.sigmas[0]), float(pipe.scheduler.init_noise_sigma)
    generator, labelled = torch.Generator().manual_seed(seed), []
    for (cls, fam), samples in seen_samples(per_combo, seed).items():
        z0 = encode(pipe.vae, renders(samples))
        start = (z0 + sigma_max * torch.randn(z0.shape, generator=generator)) / init_sigma
        images = pipe([f"A {cls} in {fam} style"] * len(samples), latents=start, num_inference_steps=steps,
                      guidance_scale=guidance, height=64, width=64).images
        labelled += [(image, cls, fam, s.style.spacing) for image, s in zip(images, samples)]
    pipe.scheduler = original
    return tally(labelled)


@torch.no_grad()
def judge_partial_start(pipe, strength: float, per_combo: int, steps: int, guidance: float, seed: int) -> dict:
    """Seen combos sampled from a render noised to the fraction `strength` of the schedule (SDEdit,
    arXiv 2108.01073, Sec. 3): can the UNet keep a pattern it is given, where it cannot draw one
    from pure noise? The level at which the family is lost says where the UNet fails."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    generator, labelled = torch.Generator().manual_seed(seed), []
    for (cls, fam), samples in seen_samples(per_combo, seed).items():
        images = img2img([f"A {cls} in {fam} style"] * len(samples), image=[Image.fromarray(a) for a in renders(samples)],
                         strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                         generator=generator).images
        labelled += [(image, cls, fam, s.style.spacing) for image, s in zip(images, samples)]
    return tally(labelled)


CAPTION_KINDS = ("right", "wrong family", "wrong class", "no caption")


@torch.no_grad()
def caption_reliance(pipe, n: int, seed: int, timesteps=(50, 200, 400, 600, 800, 950)) -> dict:
    """The UNet's training loss (its own target: epsilon or v) on n renders of seen combos at fixed
    timesteps, with the right caption, a wrong family word, a wrong class word and zero embeddings
    (the unconditional input). Where a wrong word costs nothing, the UNet ignores that word."""
    from diffusers import DDPMScheduler

    from unziplora.toyworld import CLASSES, FAMILIES
    from unziplora.toyworld.split import pretraining_sample

    rng = np.random.default_rng(seed)
    samples = [pretraining_sample(rng) for _ in range(n)]
    latents = encode(pipe.vae, renders(samples)).float()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))

    def other(names, name, i):  # a different name, cycling through all of them
        return names[(names.index(name) + 1 + i % (len(names) - 1)) % len(names)]

    captions = {"right": [s.caption for s in samples],
                "wrong family": [f"A {s.subject.cls} in {other(FAMILIES, s.style.family, i)} style" for i, s in enumerate(samples)],
                "wrong class": [f"A {other(CLASSES, s.subject.cls, i)} in {s.style.family} style" for i, s in enumerate(samples)]}
    conditioning = {kind: pipe.encode_prompt(c, do_classifier_free_guidance=False) for kind, c in captions.items()}
    right = conditioning["right"]
    conditioning["no caption"] = (torch.zeros_like(right[0]), None, torch.zeros_like(right[2]), None)
    time_ids = sdxl_time_ids(64, n=n)
    training = DDPMScheduler.from_config(pipe.scheduler.config)  # the forward process the recipe trained with
    table = {}
    for t in timesteps:
        steps = torch.full((n,), t)
        noisy = training.add_noise(latents, noise, steps)
        target = training.get_velocity(latents, noise, steps) if training.config.prediction_type == "v_prediction" else noise
        table[t] = {}
        for kind in CAPTION_KINDS:
            embeds, _, pooled, _ = conditioning[kind]
            pred = pipe.unet(noisy.to(pipe.unet.dtype), steps, embeds,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.to(pipe.unet.dtype)}).sample
            table[t][kind] = float(((pred.float() - target) ** 2).mean())
    return table


@torch.no_grad()
def family_response(pipe, n: int, seed: int, steps: int = 30, guidance: float = 5.0, every: int = 5) -> dict:
    """How far each family word moves the UNet's prediction, against what the whole caption moves it.

    Along the sampler's trajectory of "A square in stripes style" (n noises, CFG `guidance`), at
    every `every`-th timestep: |pred(family f) - pred(stripes)| / |pred(stripes) - pred(no caption)|,
    the mean over the n latents, for every other family f. Near 0: the UNet draws f as it draws
    stripes, whatever the text encoders give it; classifier-free guidance (arXiv 2207.12598, Eq. 6)
    scales both differences alike, so no guidance scale separates such families."""
    from unziplora.toyworld import FAMILIES

    families = ["stripes"] + [f for f in FAMILIES if f != "stripes"]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        [f"A square in {f} style" for f in families], do_classifier_free_guidance=True)
    embeds, pooled = torch.cat([embeds, negative[:1]]), torch.cat([pooled, negative_pooled[:1]])
    k, unet, scheduler = len(families) + 1, pipe.unet, pipe.scheduler
    time_ids = sdxl_time_ids(64, n=k * n).to(unet.dtype)
    scheduler.set_timesteps(steps)
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    table = {}
    for i, t in enumerate(scheduler.timesteps):
        pred = unet(scheduler.scale_model_input(x, t).repeat(k, 1, 1, 1).to(unet.dtype), t,
                    embeds.repeat_interleave(n, 0), added_cond_kwargs={"text_embeds": pooled.repeat_interleave(n, 0),
                                                                      "time_ids": time_ids}).sample.float()
        pred = pred.reshape(k, n, -1)
        stripes, unconditional = pred[0], pred[-1]
        caption = (stripes - unconditional).norm(dim=-1)
        if i % every == 0:
            table[int(t)] = {f: float(((pred[j] - stripes).norm(dim=-1) / caption).mean())
                             for j, f in enumerate(families[1:], start=1)}
        guided = unconditional + guidance * (stripes - unconditional)
        x = scheduler.step(guided.reshape(shape), t, x).prev_sample
    return table


@torch.no_grad()
def word_distinctness(pipe) -> dict:
    """Do the text encoders tell the words apart? For captions that differ only in the family
    word ("A square in {family} style", all pairs) and only in the class word ("A {class} in
    stripes style"): the mean cosine similarity of the pooled embeddings (the UNet's added
    conditioning) and the largest relative change of a token's state (its cross-attention input),
    both averaged over the pairs. Near 1 and near 0: the UNet cannot see which word was written."""
    from itertools import combinations

    from unziplora.toyworld import CLASSES, FAMILIES

    n_tokens = len(pipe.tokenizer("A square in stripes style").input_ids)  # through the end token
    result = {}
    for word, captions in (("family", [f"A square in {f} style" for f in FAMILIES]),
                           ("class", [f"A {c} in stripes style" for c in CLASSES])):
        states, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
        states, pooled = states[:, :n_tokens].float(), pooled.float()
        pairs = list(combinations(range(len(captions)), 2))
        cosines = [float(torch.nn.functional.cosine_similarity(pooled[i], pooled[j], dim=0)) for i, j in pairs]
        change = [float(((states[i] - states[j]).norm(dim=-1) / states[i].norm(dim=-1)).max()) for i, j in pairs]
        result[word] = {"pooled_cosine": sum(cosines) / len(pairs), "state_change": sum(change) / len(pairs)}
    return result


def main(argv: list[str] | None = None) -> None:
    """The command; argv: its arguments (None: the process's), for the experiment scripts that judge their model."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--per-combo", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="default: benchmarks/results/base_model_quality.json, "
                        "base_model_family_response.json with --family-response, vae_ceiling.json with --vae")
    parser.add_argument("--diagnose", action="store_true", help="add the decoder-noise and leaky-start rows and the per-timestep caption table")
    parser.add_argument("--vae", metavar="FILE", help="only the renders and VAE rows, for a VAE file "
                        "(train_base_model.py --export-vae) instead of a model: its ceiling for samples")
    parser.add_argument("--family-response", action="store_true",
                        help="only the table of how far each family word moves the UNet's prediction (a minute)")
    args = parser.parse_args(argv)
    if args.vae and (args.diagnose or args.family_response):
        parser.error("--vae judges a VAE alone: drop --diagnose / --family-response (they need a whole model)")
    name = "vae_ceiling" if args.vae else "base_model_family_response" if args.family_response else "base_model_quality"
    args.json = args.json or f"benchmarks/results/{name}.json"  # one file per kind of result, none overwrites another
    np.random.seed(0)  # in main, so that a caller's run is seeded as the command's
    try:
        pipe = SimpleNamespace(vae=read_vae_file(args.vae)) if args.vae else load_pipeline(args.model)
    except UnZipLoRAError as error:
        parser.error(str(error))
    if args.family_response:
        return print_family_response(family_response(pipe, 8, args.seed, args.steps, args.guidance), args)
    t0 = time.perf_counter()
    results = {"renders themselves (the oracles' own accuracy)": judge_renders(128, args.seed),
               "VAE reconstructions": judge_vae(pipe, 128, args.seed)}
    if not args.vae:
        results |= {name: judge(pipe, combos, args.per_combo, args.steps, args.guidance, args.seed)
                    for name, combos in (("seen combos", SEEN_COMBOS), ("held-out combos", HELDOUT_COMBOS))}
    if args.diagnose:
        results |= {f"VAE reconstructions, latent noise {s}": judge_vae(pipe, 128, args.seed, s) for s in (0.1, 0.2, 0.4)}
        results["seen combos, leaky start"] = judge_leaky_start(pipe, args.per_combo, args.steps, args.guidance, args.seed)
        results |= {f"seen combos, from a render noised to strength {s}": judge_partial_start(
            pipe, s, args.per_combo, args.steps, args.guidance, args.seed) for s in (0.2, 0.4, 0.6, 0.8)}
    reliance = caption_reliance(pipe, 64, args.seed) if args.diagnose else None
    distinct = word_distinctness(pipe) if args.diagnose else None
    print("| combos | images | right class | right family | both | right family, analytic oracle |\n"
          "|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images']} | {r['class_acc']:.1%} | {r['family_acc']:.1%} | {r['both_acc']:.1%} "
              f"| {r['family_acc_analytic']:.1%} |")
    families = sorted({f for r in results.values() for f in r["family_acc_by_family"]})
    print("\nright family, per family:\n| combos | " + " | ".join(families) + " |\n" + "|---" * (len(families) + 1) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['family_acc_by_family'].get(f, 0):.0%}" for f in families) + " |")
    print("\nright family, per pattern spacing (renders only):")
    for name, r in results.items():
        if "family_acc_by_spacing" in r:
            print(f"- {name}: " + ", ".join(f"{k}: {v:.0%}" for k, v in r["family_acc_by_spacing"].items()))
    if args.diagnose:  # where the wrong family verdicts go: blotches called "noise"? flat fills "solid"?
        for name in ("seen combos", "held-out combos"):
            print(f"\n{name}, what the family judge named each family (count):")
            for fam, counts in results[name]["family_judged_as"].items():
                print(f"- {fam}: " + ", ".join(f"{named} {n}" for named, n in counts.items()))
    if distinct:
        print("\ncaptions that differ in one word, through the text encoders (pooled cosine: 1 = the same;"
              " state change: largest relative change of a token's state):")
        for word, d in distinct.items():
            print(f"- {word} word: pooled cosine {d['pooled_cosine']:.3f}, state change {d['state_change']:.3f}")
    if reliance:
        print("\nUNet training loss per timestep on 64 renders of seen combos, by caption:\n| t | "
              + " | ".join(CAPTION_KINDS) + " |\n" + "|---" * (len(CAPTION_KINDS) + 1) + "|")
        for t, row in reliance.items():
            print(f"| {t} | " + " | ".join(f"{row[k]:.4f}" for k in CAPTION_KINDS) + " |")
    print(f"({time.perf_counter() - t0:.0f} s; {args.steps} steps, CFG {args.guidance}, {args.per_combo} images per combo)")
    write_json(args, results=results, caption_reliance=reliance, word_distinctness=distinct)


def print_family_response(table: dict, args) -> None:
    families = list(next(iter(table.values())))
    print("|pred(family) - pred(stripes)| / |pred(stripes) - pred(no caption)| along the sampling of "
          "'A square in stripes style' (8 noises):\n| t | " + " | ".join(families) + " |\n" + "|---" * (len(families) + 1) + "|")
    for t, row in table.items():
        print(f"| {t} | " + " | ".join(f"{row[f]:.2f}" for f in families) + " |")
    write_json(args, family_response=table)


def write_json(args, **payload) -> None:
    """The command's JSON at --json: the model, the settings and what was measured."""
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.vae or args.model, "settings": vars(args), **payload}, indent=2))


if __name__ == "__main__":
    main()
