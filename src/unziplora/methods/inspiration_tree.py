"""Inspiration Tree (arXiv 2305.18203; reference code google/inspiration_tree, diffusers 0.14 on SD 1.x).

One node of the tree from one image: two new text tokens, `<*>` and `<&>`, learned by textual
inversion (the UNet and the text encoders stay frozen; only the two tokens' input embeddings
train) on every text encoder the base model has (SDXL: both). Each step draws prompts from the
reference's object templates holding only one of the two tokens, timesteps from its cosine
weighting, and views of the image (the reference trains a node on several images; we make ten
views of the one image). Four seeds train a fifth of the steps each; the most consistent seed
(its score over features of each token's generations, inspiration_seeds.py) continues to the
run's train.steps. A rule written down before any run was scored (docs/method.md §12) names
the content token and the style token. Each token is written as textual-inversion files that
stock diffusers' `load_textual_inversion` loads (one file per text encoder, diffusers' SDXL
convention). References are to the reference code's files and lines (docs/method.md §12).
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from ..core.data import resize_shorter_side, to_tensor
from ..core.objective import prediction_type
from ..core.train import NonFiniteLoss, StepLog, clip_gradients, fit, make_optimizer, text_encoders
from ..errors import UnZipLoRAError
from ..models.families import family_of
from ..names import Branch, Method, Mode
from ..run.folder import save_safetensors
from ..run.sources import TOKENS_DIR
from .base import Combine, MethodPlugin, ModelCardText, ReferenceSettings
from .inspiration_seeds import assign_tokens, features_for, require_features, select_seed

REFERENCE = ReferenceSettings("google/inspiration_tree (arXiv 2305.18203)",
                              {"train.steps": 1000, "train.weight_decay": 1e-2,  # main_multiseed.py:106; t_i_d.py:262
                               "train.max_grad_norm": 0.0})  # 0: no clipping; the reference clips no gradient
TOKENS = ("<*>", "<&>")  # main_multiseed.py:48
INITIALIZER = "object"  # textual_inversion_decomposed.py:185 ("object object": both tokens start as "object")
BATCH, ACCUMULATION, BASE_LR = 2, 4, 5e-4  # textual_inversion_decomposed.py:209, :221, :232
LR = BASE_LR * BATCH * ACCUMULATION  # scale_lr is on unless passed (store_false, :237; :671-674)
T_DIST = 0.5  # textual_inversion_decomposed.py:357, weights :773-776
RANDOM_DROP = 0.0  # :361; > RANDOM_DROP (always, at 0) keeps one token of the two, at random (:807-809)
FLIP_P = 0.5  # TextualInversionDataset's flip_p (:453, :540)
VIEWS = 10  # a child node trains on the 10 most central of its generations (utils.py:117)
VIEW_SCALE = (0.75, 1.0)  # side of each view's square crop, as a fraction of the image's shorter side
# imagenet_templates_small, the reference's "object" templates (textual_inversion_decomposed.py:390-418)
TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)


CARD = """---
base_model: {base_model}
library_name: diffusers
tags: [textual-inversion, unziplora, inspiration-tree, text-to-image]
---
# {name}: a content token and a style token from one image

![input](thumbnail.png)

Decomposed by [unziplora](https://arxiv.org/abs/2412.04465) with **{method}** (Inspiration Tree,
arXiv 2305.18203) from one image of a **{subject}**: {steps} steps, seed {seed}. {export}

| token | files (one per text encoder) | example prompt |
|---|---|---|
| content `{identifier}` | `content_tokens/text_encoder*.safetensors` | `A {identifier} {subject} on the beach` |
| style `{style}` | `style_tokens/text_encoder*.safetensors` | `A truck in {style} style` |

{together}

    unziplora generate "{path}" --mode both --prompt "A <c> {subject} in <s> style in a boat"

## diffusers

```python
from pathlib import Path

import torch
from diffusers import {pipeline}

device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = {pipeline}.from_pretrained(
    "{base_model}", dtype=torch.float16 if device == "cuda" else torch.float32).to(device)
for branch, token in (("content", "{identifier}"), ("style", "{style}")):
    for file in sorted(Path("{path}", branch + "_tokens").glob("text_encoder*.safetensors")):
        encoder = file.stem  # text_encoder, text_encoder_2: diffusers' SDXL convention, one file each
        pipe.load_textual_inversion(str(file), token=token, text_encoder=getattr(pipe, encoder),
                                    tokenizer=getattr(pipe, encoder.replace("text_encoder", "tokenizer")))
settings = dict(height={resolution}, width={resolution}, num_inference_steps={sample_steps}, guidance_scale={guidance},
                guidance_rescale={guidance_rescale})
image = pipe("A {identifier} {subject} in {style} style", **settings).images[0]
```

`unziplora export "{path}" --format kohya` writes each token as one AUTOMATIC1111 / ComfyUI
embedding file (SDXL: `clip_l` and `clip_g`; SD 1.x: `emb_params`).

Files: {files}`manifest.json` (prompts, the seed selection, the token assignment, config,
versions, timings), `config.yaml` (reusable with `--config`).
"""


def known_templates(tokenizer) -> tuple[str, ...]:
    """The templates whose words the base model knows: all of them on CLIP's tokenizer; on a toy
    tokenizer (the embedded model) those of its words only, else "a {}"."""
    from ..core.prompts import unknown_words

    kept = tuple(t for t in TEMPLATES if not unknown_words(tokenizer, t.format("")))
    return kept or ("a {}",)


def make_views(image: Image.Image, resolution: int, n: int, generator: torch.Generator) -> list[Image.Image]:
    """n square views of one image at `resolution`: the centre square, then random square crops of
    VIEW_SCALE of the shorter side at random places (the reference's several photos of a concept)."""
    width, height = image.size
    short = min(width, height)
    views = []
    for i in range(n):
        fraction = 1.0 if i == 0 else VIEW_SCALE[0] + (VIEW_SCALE[1] - VIEW_SCALE[0]) * float(
            torch.rand((), generator=generator))
        side = max(1, round(short * fraction))
        if i == 0:
            left, top = (width - side) // 2, (height - side) // 2
        else:
            left = int(torch.randint(0, width - side + 1, (), generator=generator))
            top = int(torch.randint(0, height - side + 1, (), generator=generator))
        crop = image.crop((left, top, left + side, top + side))
        views.append(crop.resize((resolution, resolution), Image.Resampling.BICUBIC))
    return views


class Views:
    """The views' latent distributions (each view and its mirror image encoded once); a sample is
    a fresh latent of a random view, mirrored with probability FLIP_P."""

    @torch.no_grad()
    def __init__(self, views: list[Image.Image], vae, device):
        self.vae, self.resolution = vae, views[0].size[0]
        pixels = torch.stack([to_tensor(v) for v in views])
        pixels = torch.cat([pixels, pixels.flip(-1)])  # [views; mirrored views]
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        self.mean, self.std, self.n = dist.mean.float(), dist.std.float(), len(views)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        pick = torch.randint(0, self.n, (batch,), generator=generator)
        flip = (torch.rand(batch, generator=generator) < FLIP_P).long()
        index = (pick + self.n * flip).to(self.mean.device)
        noise = torch.randn(self.mean[index].shape, generator=generator).to(self.mean.device)
        latent = self.mean[index] + self.std[index] * noise
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latent - shift) * self.vae.config.scaling_factor


@dataclass
class TokenSlot:
    """The two tokens in one text encoder: their ids and the trainable rows."""

    name: str  # the pipeline attribute: text_encoder / text_encoder_2
    encoder: torch.nn.Module
    ids: list[int]
    initial: torch.Tensor  # (2, D)

    @property
    def weight(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight


def add_tokens(pipe, device) -> list[TokenSlot]:
    """Add `<*>` and `<&>` to every tokenizer and text encoder (fp32, frozen but for the input
    embeddings), both initialised as "object"; a tokenizer without a one-token "object" (a toy
    vocabulary) starts them at the mean of its embeddings (docs/method.md §12)."""
    slots = []
    for name in ("text_encoder", "text_encoder_2"):
        encoder, tokenizer = getattr(pipe, name, None), getattr(pipe, name.replace("text_encoder", "tokenizer"), None)
        if encoder is None:
            continue
        if any(t in tokenizer.get_vocab() for t in TOKENS):
            raise UnZipLoRAError(f"the base model's {name} already has a token {' or '.join(TOKENS)}; "
                                 "Inspiration Tree needs them new")
        init = tokenizer.encode(INITIALIZER, add_special_tokens=False)
        tokenizer.add_tokens(list(TOKENS))
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        encoder.to(device, torch.float32).requires_grad_(False)
        weight = encoder.get_input_embeddings().weight
        start = weight[init[0]] if len(init) == 1 and f"{INITIALIZER}</w>" in tokenizer.get_vocab() \
            else weight[: -len(TOKENS)].mean(0)
        ids = tokenizer.convert_tokens_to_ids(list(TOKENS))
        with torch.no_grad():
            weight[ids] = start.detach().clone()
        weight.requires_grad_(True)
        slots.append(TokenSlot(name, encoder, ids, weight[ids].detach().clone()))
    return slots


def _with_grad(family):
    """The family's prompt encoding without its no_grad: textual inversion trains through it."""
    return inspect.unwrap(type(family).encode).__get__(family)


class TokenLoop:
    """Textual inversion of the two tokens, one optimiser step (ACCUMULATION micro-batches of BATCH)
    per `train_step`; the loop `core.train.fit` runs. `state()` / `load_state()` carry a seed's
    rows, optimiser and random state from the selection phase into the final training."""

    def __init__(self, pipe, slots: list[TokenSlot], views: Views, templates, seed: int, total_steps: int,
                 train, device, dtype):
        self.pipe, self.slots, self.views, self.templates = pipe, slots, views, templates
        self.device, self.dtype, self.train_config = torch.device(device), dtype, train
        self.step, self.total_steps, self.should_stop, self.history, self.timings = 0, total_steps, False, [], {}
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.kind = prediction_type(self.scheduler)
        steps = self.scheduler.config.num_train_timesteps
        t = torch.arange(steps, dtype=torch.float64)
        self.t_weights = (1 - T_DIST * torch.cos(torch.pi * t / steps)) / steps  # more weight on noisy steps
        self.family = family_of(pipe)
        self.encode = _with_grad(self.family)
        self.unet = pipe.unet
        self.rows = [torch.nn.Parameter(s.initial.clone()) for s in slots]
        self.optimizer = make_optimizer([{"params": self.rows, "lr": LR}], train)  # 8-bit AdamW refused off CUDA
        self.max_grad_norm = train.max_grad_norm  # the reference's 0: no clipping
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)

    def write_rows(self) -> None:
        with torch.no_grad():
            for slot, rows in zip(self.slots, self.rows):
                slot.weight[slot.ids] = rows.detach().to(slot.weight.dtype)

    def _micro_batch(self) -> torch.Tensor:
        which = int(torch.randint(0, 2, (), generator=self.generator))  # RANDOM_DROP 0: one token, always
        texts = [self.templates[int(torch.randint(0, len(self.templates), (), generator=self.generator))]
                 .format(TOKENS[which]) for _ in range(BATCH)]
        latents = self.views.sample(BATCH, self.generator)
        noise = torch.randn(latents.shape, generator=self.generator).to(latents.device)
        timesteps = torch.multinomial(self.t_weights, BATCH, replacement=True, generator=self.generator)
        timesteps = timesteps.to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.kind == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        states, pooled = self.encode(self.pipe, texts, self.device)
        added = self.family.added_cond(pooled, self.views.resolution, BATCH, self.device, self.dtype)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            pred = self.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=states.to(self.dtype),
                             added_cond_kwargs=added).sample
        return F.mse_loss(pred.float(), target.float())

    def train_step(self) -> StepLog:
        self.write_rows()
        for slot in self.slots:
            slot.weight.grad = None
        total = 0.0
        for _ in range(ACCUMULATION):
            loss = self._micro_batch() / ACCUMULATION  # accelerate's accumulation averages the micro-batches
            if not torch.isfinite(loss):
                raise NonFiniteLoss(self.step, loss.item())
            self.scaler.scale(loss).backward()
            total += loss.item()
        for slot, rows in zip(self.slots, self.rows):  # only the two tokens' rows move (:832-836)
            rows.grad = slot.weight.grad[slot.ids].float()
            slot.weight.grad = None
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.rows, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.write_rows()
        log = StepLog(self.step, total, total, 0.0, False)
        self.step += 1
        self.history.append(log)
        return log

    def state(self) -> dict:
        return {"rows": [r.detach().clone() for r in self.rows], "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state(), "step": self.step, "history": list(self.history)}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for rows, saved in zip(self.rows, state["rows"]):
                rows.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step, self.history = state["step"], list(state["history"])
        self.write_rows()

    def token_rows(self, which: int) -> dict[str, torch.Tensor]:
        """One token's learned embedding in each text encoder, on the CPU."""
        return {slot.name: rows[which].detach().float().cpu().contiguous() for slot, rows in zip(self.slots, self.rows)}


def selection_steps(total: int) -> int:
    """Steps each candidate seed trains: a fifth of the run's (the reference: 200 of 1000)."""
    return max(1, min(total, round(total / 5)))


class InspirationTree(MethodPlugin):
    method = Method.INSPIRATION_TREE
    help = ("Inspiration Tree baseline: two textual-inversion tokens, best of 4 seeds (reference settings: "
            "1000 steps; a CLIP model (--clip) scores the seeds except on the embedded model)")
    reference = REFERENCE
    card = ModelCardText(
        "Inspiration Tree (arXiv 2305.18203): no LoRA; two text tokens learned by textual inversion, named content "
        "and style by the rule of docs/method.md §12.",
        "Both together (both tokens in one ordinary prompt):",
        "`loss.csv` / `loss.png` (the chosen seed's whole training), ",
        CARD,
    )

    def check(self, spec) -> None:
        super().check(spec)
        require_features(spec)

    def prepare(self, spec, pipe, image, prompts, profile, device, dtype, workdir: Path, progress: bool = False,
                callbacks=()):
        cfg = spec.config
        features = features_for(spec)
        device = torch.device(device)
        pipe.unet.to(device, dtype).requires_grad_(False)
        pipe.vae.to(device)
        if cfg.train.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        for encoder in text_encoders(pipe):
            encoder.to(device)
        slots = add_tokens(pipe, device)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        views = Views(make_views(image, cfg.train.resolution, VIEWS, generator), pipe.vae, device)
        templates = known_templates(pipe.tokenizer)

        def loop(seed: int) -> TokenLoop:
            return TokenLoop(pipe, slots, views, templates, seed, cfg.train.steps, cfg.train, device, dtype)

        t0 = time.perf_counter()
        steps = selection_steps(cfg.train.steps)
        best, record = select_seed(loop, steps, cfg, pipe, features, progress, callbacks)
        final = loop(best["seed"])
        final.load_state(best["state"])
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.selection, self.features, self.spec, self.image, self.progress = record, features, spec, image, progress
        return final

    def write_weights(self, loop, folder: Path) -> dict[str, str]:
        loop.write_rows()
        assignment = assign_tokens(loop.pipe, self.spec.config, self.features, self.image, TOKENS, self.progress)
        self.assignment = assignment
        files = {}
        for branch in (Branch.CONTENT, Branch.STYLE):
            token = assignment[branch.value]
            rows = loop.token_rows(TOKENS.index(token))
            for encoder, row in rows.items():
                relative = f"{TOKENS_DIR.format(branch.value)}/{encoder}.safetensors"
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                # diffusers' textual-inversion format: {token: embedding}, one file per text encoder
                save_safetensors({token: row}, folder / relative, {"token": token, "text_encoder": encoder})
                files[f"{branch.value}_tokens_{encoder}"] = relative
        return files

    def style_words(self, config) -> str:
        return TOKENS[1]  # replaced by the assigned style token once trained (manifest_fields)

    def manifest_fields(self, spec, loop) -> dict:
        c, a = spec.config, self.assignment
        prompts = {"subject": c.prompts.subject, "identifier": a["content"], "style_words": a["style"],
                   "combined": f"A {a['content']} {c.prompts.subject} in {a['style']} style",
                   "content": f"A {a['content']} {c.prompts.subject}", "style": f"A {c.prompts.subject} in {a['style']} style"}
        reference = {"source": REFERENCE.source, **{k.split(".")[1]: v for k, v in REFERENCE.values.items()},
                     "used": all(getattr(getattr(c, k.split(".")[0]), k.split(".")[1]) == v
                                 for k, v in REFERENCE.values.items())}
        return {
            "prompts": prompts,
            "final_loss": loop.history[-1].loss,
            "tokens": list(TOKENS),
            "token_assignment": a,
            "seed_selection": self.selection,
            "textual_inversion": {"lr": LR, "base_lr": BASE_LR, "batch": BATCH, "accumulation": ACCUMULATION,
                                  "t_dist": T_DIST, "random_drop": RANDOM_DROP, "flip_p": FLIP_P, "views": VIEWS,
                                  "view_scale": list(VIEW_SCALE), "initializer": INITIALIZER,
                                  "templates": len(known_templates(loop.pipe.tokenizer)),
                                  "text_encoders": [s.name for s in loop.slots]},
            "reference_settings": reference,
            "not_used": ["lora.rank", "lora.lr", "lora.merger_lr", "masks"],
        }

    def combine(self, mode: Mode, style_method: Method | None) -> Combine:
        return Combine.TOKENS
