"""Recipe of the embedded base model: a small SDXL-shaped pipeline trained from scratch on the world.

Two phases, resumable from a checkpoint at any point (safetensors + JSON, never pickle):
  1. VAE (AutoencoderKL): reconstruct 32 px crops of 64 px renders (the VAE is convolutional;
     crops cost a quarter and teach the same local code), tiny KL weight. Then the latent
     scaling factor is set to 1 / std of the latents, as SDXL's VAE config does for its own
     data.
  2. UNet + both text encoders, jointly: epsilon-prediction MSE (DDPM, arXiv 2006.11239,
     Eq. 14) on captions "A {class} in {family} style"; 10 % of captions are dropped to zero
     embeddings, which is what SDXL's pipeline feeds the unconditional branch of
     classifier-free guidance (force_zeros_for_empty_prompt). EMA weights are exported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from unziplora.models.families import sdxl_time_ids
from unziplora.errors import UnZipLoRAError
from .architecture import TinySDXLSpec, tiny_sdxl_components
from unziplora.toyworld.world import WORLD_WORDS

from .data import encode_text, render_batch
from .files import write_recipe

BASE_SPEC = TinySDXLSpec(
    block_out_channels=(32, 64, 128),
    transformer_layers_per_block=(1, 1, 1),
    attention_head_dim=(2, 4, 4),
    text_hidden_size=64,
    projection_dim=64,
    vae_block_out_channels=(32, 64, 64),  # 64 px -> 16x16 latents
    # 8 latent channels (SDXL: 4): 6x compression instead of 12x keeps patterns and colours at
    # this size; the UNet's cost is unchanged but for its first and last convolution.
    latent_channels=8,
    sample_size=64,
    # >= 4 channels per group: one channel per group would normalise away each image's colours.
    norm_num_groups=8,
    vae_norm_num_groups=8,
    words=tuple(WORLD_WORDS),
)

# The budget's machine: 2 cores, so 150 minutes of it are 300 CPU-minutes of the training process.
BUDGET_CORES = 2


@dataclass
class PretrainConfig:
    seed: int = 0
    image_size: int = 64
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 4500
    batch: int = 32
    lr: float = 4e-4  # UNet and text encoders; cosine decay to 10 % after warm-up
    warmup: int = 300
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    pool_size: int = 24000  # renders encoded once after the VAE phase, then sampled (saves ~40 % per step)
    # Knobs off in the committed recipe (research/toyworld_v1 tried them):
    snr_gamma: float | None = None  # Min-SNR-gamma loss weights (arXiv 2303.09556, Sec. 3.4)
    # v-prediction on zero-terminal-SNR betas (arXiv 2305.08891, Sec. 3.1-3.2): the last timestep is pure
    # noise, so the model learns to set a sample's global colour instead of inheriting the noise's.
    v_prediction: bool = True
    checkpoint_every_s: float = 300.0
    # Total training time over every resume (VAE, latent pool and UNet), in seconds of the machine
    # (`spent_s`); None: no limit. Stops with a checkpoint when spent.
    budget_s: float | None = None
    threads: int = 2
    # Where the models train ("cuda" on a GPU machine) and how many processes draw the renders: the
    # random draws stay on the CPU generators in the same order, so only float rounding differs by device.
    device: str = "cpu"
    render_workers: int = 0
    spec: TinySDXLSpec = field(default_factory=lambda: BASE_SPEC)
    # Start from a trained pipeline folder instead of from scratch: its VAE (frozen, so the VAE phase
    # is skipped), UNet and text encoders; tokens both vocabularies share keep their embeddings.
    from_model: str | None = None


class Pretrainer:
    """Holds components, optimiser, EMA and RNGs; `run(until_s)` trains until done or out of time."""

    def __init__(self, config: PretrainConfig, workdir: Path):
        self.config, self.workdir = config, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(config.threads)
        self.c = tiny_sdxl_components(config.spec, seed=config.seed)
        self.device = torch.device(config.device)
        for key in ("vae", "unet", "text_encoder", "text_encoder_2"):
            self.c[key].to(self.device)
        self.workers = None  # the render process pool, started on first use
        self.token_ids: dict[str, list[torch.Tensor]] = {}
        if config.v_prediction:  # the pipeline's scheduler is exported with the model: it must match
            self.c["scheduler"] = type(self.c["scheduler"]).from_config(
                self.c["scheduler"].config, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                timestep_spacing="trailing")  # trailing: sampling starts at t = T (arXiv 2305.08891, Sec. 3.3)
        self.phase, self.step = "vae", 0
        self.rng = np.random.default_rng(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.noise_scheduler = DDPMScheduler.from_config(self.c["scheduler"].config)
        self._build_optimizer()
        self.ema: dict[str, torch.Tensor] = {}
        self.log: list[dict] = []
        self.pool: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
        # Every change of a phase's length on resume (a cosine restart): the recipe must say so,
        # since one uninterrupted run with the final lengths would not give the same weights.
        self.schedule: list[dict] = []
        self.saved_config: dict | None = None
        self.spent_s = 0.0  # machine seconds of training so far, over every resume
        self.on_step = None  # called after every step with the trainer (the learning curve)
        if (self.workdir / "checkpoint.safetensors").is_file():
            self.load()
        elif config.from_model:
            self.start_from_model(Path(config.from_model))

    @torch.no_grad()
    def start_from_model(self, folder: Path) -> None:
        """Take the VAE, UNet and text encoders of an exported pipeline and go straight to the UNet
        phase. The tokenizers are this world's: an embedding row is copied where the old vocabulary
        has the same token, new words keep their fresh rows (a fine-tune learns them)."""
        from diffusers import StableDiffusionXLPipeline

        if not (folder / "model_index.json").is_file():
            raise UnZipLoRAError(f"--from-model {folder} is not a diffusers pipeline folder")
        old = StableDiffusionXLPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
        for key in ("vae", "unet"):
            self.c[key].load_state_dict(getattr(old, key).state_dict())
        for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            state = getattr(old, encoder).state_dict()
            rows = next(k for k in state if k.endswith("embeddings.token_embedding.weight"))
            table = self.c[encoder].state_dict()[rows].clone()
            old_ids = getattr(old, tokenizer).get_vocab()
            for token, i in self.c[tokenizer].get_vocab().items():
                if token in old_ids:
                    table[i] = state[rows][old_ids[token]]
            state[rows] = table
            self.c[encoder].load_state_dict(state)
        self.c["vae"].register_to_config(scaling_factor=old.vae.config.scaling_factor)
        self.c["vae"].requires_grad_(False)
        self.phase, self.step = "unet", 0
        self._build_optimizer()

    # ----- parameters ---------------------------------------------------------------------------
    def trainable(self) -> dict[str, torch.nn.Parameter]:
        if self.phase == "vae":
            return {f"vae.{n}": p for n, p in self.c["vae"].named_parameters()}
        return {f"{k}.{n}": p for k in ("unet", "text_encoder", "text_encoder_2") for n, p in self.c[k].named_parameters()}

    def _build_optimizer(self) -> None:
        lr = self.config.vae_lr if self.phase == "vae" else self.config.lr
        self.optimizer = torch.optim.AdamW(list(self.trainable().values()), lr=lr, weight_decay=1e-4 if self.phase == "unet" else 0.0)

    def render(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[str]]:
        """`render_batch` on the training device, drawn by `render_workers` processes when set."""
        if self.config.render_workers and self.workers is None:
            import multiprocessing

            # spawn: the workers must not inherit a CUDA context
            self.workers = multiprocessing.get_context("spawn").Pool(self.config.render_workers)
        pixels, captions = render_batch(rng, n, self.config.image_size, self.workers)
        return pixels.to(self.device), captions

    def lr_at(self, step: int, total: int, peak: float) -> float:
        warm = min(self.config.warmup, total // 10)
        if step < warm:
            return peak * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    # ----- steps -----------------------------------------------------------------------------------
    def vae_step(self) -> float:
        cfg = self.config
        pixels, _ = self.render(self.rng, cfg.vae_batch)
        if cfg.vae_crop < cfg.image_size:
            top, left = self.rng.integers(0, cfg.image_size - cfg.vae_crop + 1, 2)
            top, left = top - top % 8, left - left % 8  # keep the pattern phase aligned to the latent grid
            pixels = pixels[:, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
        dist = self.c["vae"].encode(pixels).latent_dist
        recon = self.c["vae"].decode(dist.sample(self.gen)).sample
        loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels) + cfg.vae_kl_weight * dist.kl().mean()
        return self._apply(loss, cfg.vae_steps, cfg.vae_lr)

    @torch.no_grad()
    def latent_pool(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Latent mean/std and captions of `pool_size` renders; a pure function of the seed and the
        (frozen) VAE, so it is cached in the workdir: a resumed run skips re-encoding it (minutes)."""
        if self.pool is None:
            self.pool = self._load_pool() or self._encode_pool()
        return self.pool

    def _pool_key(self) -> str:
        """What the pool depends on: seed, size, render size and the VAE's weights."""
        digest = hashlib.sha256()
        for name, t in sorted(self.c["vae"].state_dict().items()):
            digest.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.config.seed}-{self.config.pool_size}-{self.config.image_size}-{digest.hexdigest()[:16]}"

    def _load_pool(self) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
        path = self.workdir / "latent_pool.safetensors"
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != self._pool_key():  # another seed or VAE: stale, encode again
                return None
            return (f.get_tensor("means").to(self.device), f.get_tensor("stds").to(self.device),
                    json.loads(meta["captions"]))

    def _encode_pool(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        rng = np.random.default_rng([self.config.seed, 7])
        means, stds, captions = [], [], []
        for _ in tqdm(range(0, self.config.pool_size, 256), desc="encode pool", leave=False):
            pixels, caps = self.render(rng, 256)
            dist = self.c["vae"].encode(pixels).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            captions += caps
        # Contiguous: the VAE's outputs come channels-last, and the file stores plain layout; a fresh
        # and a resumed run must index the same layout to train bit for bit alike.
        pool = (torch.cat(means).contiguous(), torch.cat(stds).contiguous(), captions)
        tmp = self.workdir / "latent_pool.safetensors.tmp"
        save_file({"means": pool[0].cpu(), "stds": pool[1].cpu()}, str(tmp),
                  metadata={"key": self._pool_key(), "captions": json.dumps(captions)})
        tmp.replace(self.workdir / "latent_pool.safetensors")
        return pool

    def unet_step(self) -> float:
        cfg, c = self.config, self.c
        means, stds, pool_captions = self.latent_pool()
        index = torch.randint(0, len(pool_captions), (cfg.batch,), generator=self.gen)
        captions = [pool_captions[i] for i in index.tolist()]
        index = index.to(self.device)
        sample = means[index] + stds[index] * self._draw(torch.randn, means[index].shape)
        latents = sample * c["vae"].config.scaling_factor
        embeds, pooled = encode_text(c, captions, self.token_ids)
        keep = (self._draw(torch.rand, (len(captions),)) >= cfg.cfg_dropout).float()
        embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]
        noise = self._draw(torch.randn, latents.shape)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(captions),), generator=self.gen)
        t = t.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        time_ids = sdxl_time_ids(cfg.image_size, n=len(captions)).to(self.device)
        pred = c["unet"](noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        target = self.noise_scheduler.get_velocity(latents, noise, t) if cfg.v_prediction else noise
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * self.loss_weights(t)).mean()
        value = self._apply(loss, cfg.unet_steps, cfg.lr)
        self._update_ema()
        return value

    def _draw(self, fn, shape) -> torch.Tensor:
        """A draw from the CPU generator, moved to the training device: one stream on every device."""
        return fn(shape, generator=self.gen).to(self.device)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights: 1, or Min-SNR-gamma, min(SNR, gamma) / SNR for epsilon targets and
        min(SNR, gamma) / (SNR + 1) for v targets (arXiv 2303.09556, Sec. 3.4)."""
        gamma = self.config.snr_gamma
        if gamma is None:
            return torch.ones(len(t), device=t.device)
        alpha_bar = self.noise_scheduler.alphas_cumprod[t.cpu()]
        snr = alpha_bar / (1 - alpha_bar)
        return (snr.clamp(max=gamma) / (snr + 1 if self.config.v_prediction else snr)).to(t.device)

    def _apply(self, loss: torch.Tensor, total: int, peak: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, total, peak)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))  # warm EMA start
        for name, p in self.trainable().items():
            if name not in self.ema:
                self.ema[name] = p.detach().clone()
            else:
                self.ema[name].lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def _finish_vae(self) -> None:
        """Scaling factor = 1 / std of the latents, then switch to the UNet phase."""
        pixels, _ = self.render(np.random.default_rng(12345), 256)
        latents = self.c["vae"].encode(pixels).latent_dist.mean
        self.c["vae"].register_to_config(scaling_factor=float(1.0 / latents.std()))
        self.c["vae"].requires_grad_(False)
        self.phase, self.step = "unet", 0
        self._build_optimizer()

    # ----- the loop --------------------------------------------------------------------------------
    def run(self, budget_s: float | None = None, progress: bool = True, vae_only: bool = False) -> bool:
        """Train until both phases are done (True) or the time budget is spent (False); with
        `vae_only`, done when the VAE phase is."""
        try:
            return self._run(budget_s, progress, vae_only)
        finally:
            if self.workers is not None:
                self.workers.terminate()
                self.workers = None

    def _run(self, budget_s: float | None, progress: bool, vae_only: bool = False) -> bool:
        start = last_save = last_wall = time.monotonic()
        cpu = time.process_time()
        for key in ("vae_steps", "unet_steps"):
            before = (self.saved_config or {}).get(key, getattr(self.config, key))
            if before != getattr(self.config, key):
                self.schedule.append({"resumed_at": [self.phase, self.step], key: [before, getattr(self.config, key)]})
        self.saved_config = None
        while not (vae_only and self.phase == "unet"):
            total = self.config.vae_steps if self.phase == "vae" else self.config.unet_steps
            bar = tqdm(total=total, initial=self.step, desc=f"pretrain {self.phase}", disable=not progress)
            while self.step < total:
                loss = self.vae_step() if self.phase == "vae" else self.unet_step()
                self.log.append({"phase": self.phase, "step": self.step, "loss": round(loss, 5)})
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
                self.spent_s += self._spent_since(cpu, last_wall)
                cpu, last_wall = time.process_time(), time.monotonic()
                if self.on_step is not None:
                    self.on_step(self)
                    cpu, last_wall = time.process_time(), time.monotonic()  # measuring is not training
                now = time.monotonic()
                if now - last_save > self.config.checkpoint_every_s:
                    self.save()
                    last_save = now
                out_of_time = budget_s is not None and now - start > budget_s
                if out_of_time or (self.config.budget_s is not None and self.spent_s > self.config.budget_s):
                    bar.close()
                    self.save()
                    return False
            bar.close()
            if self.phase == "unet":
                self.save()
                return True
            self._finish_vae()
            self.save()
        return True

    def _spent_since(self, cpu: float, wall: float) -> float:
        """Machine seconds since (cpu, wall): on the CPU, the process's CPU seconds over the cores of
        the project's machine (BUDGET_CORES), so other work sharing the cores neither eats the
        budget nor stretches it, whatever the thread count; on a GPU, wall seconds."""
        if self.device.type == "cpu":
            return (time.process_time() - cpu) / BUDGET_CORES
        return time.monotonic() - wall

    # ----- checkpoints (safetensors + JSON) -------------------------------------------------------
    def save(self) -> None:
        tensors = {f"model.{k}.{n}": t.detach().cpu().contiguous()
                   for k in ("vae", "unet", "text_encoder", "text_encoder_2") for n, t in self.c[k].state_dict().items()}
        tensors.update({f"ema.{n}": t.cpu().contiguous() for n, t in self.ema.items()})
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for key, value in state.items():
                value = value.detach().cpu()
                tensors[f"opt.{idx}.{key}"] = value.reshape(-1).contiguous() if value.ndim == 0 else value.contiguous()
        tensors["rng.torch"] = self.gen.get_state()
        meta = {
            "phase": self.phase, "step": self.step, "rng_numpy": self.rng.bit_generator.state,
            "param_groups": opt["param_groups"], "scaling_factor": self.c["vae"].config.scaling_factor,
            "config": dataclasses.asdict(self.config), "log_tail": self.log[-2000:],
            "schedule": self.schedule, "spent_s": self.spent_s,
        }
        tmp = self.workdir / "checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        (self.workdir / "checkpoint.json.tmp").write_text(json.dumps(meta, default=str))
        tmp.replace(self.workdir / "checkpoint.safetensors")
        (self.workdir / "checkpoint.json.tmp").replace(self.workdir / "checkpoint.json")

    def load(self) -> None:
        meta = json.loads((self.workdir / "checkpoint.json").read_text())
        saved_spec = meta.get("config", {}).get("spec")
        spec = json.loads(json.dumps(dataclasses.asdict(self.config.spec)))  # tuples -> lists, as saved
        changed = sorted(k for k in (saved_spec or {}).keys() & spec.keys() if saved_spec[k] != spec[k])
        if changed:  # fields added to the spec later are not a change
            raise UnZipLoRAError(f"the checkpoint in {self.workdir} was trained with another model shape "
                                 f"({', '.join(changed)}); resume it with the spec it was started with "
                                 "or use a new --workdir")
        tensors = load_file(str(self.workdir / "checkpoint.safetensors"))
        for k in ("vae", "unet", "text_encoder", "text_encoder_2"):
            prefix = f"model.{k}."
            self.c[k].load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
        self.c["vae"].register_to_config(scaling_factor=meta["scaling_factor"])
        self.phase, self.step = meta["phase"], meta["step"]
        if self.phase == "unet":
            self.c["vae"].requires_grad_(False)
        self._build_optimizer()
        state = {}
        for name, t in tensors.items():
            if name.startswith("opt."):
                _, idx, key = name.split(".", 2)
                state.setdefault(int(idx), {})[key] = t.reshape(()) if key == "step" else t
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.ema = {n[len("ema."):]: t.to(self.device) for n, t in tensors.items() if n.startswith("ema.")}
        self.gen.set_state(tensors["rng.torch"])
        self.rng.bit_generator.state = meta["rng_numpy"]
        self.log = meta.get("log_tail", [])
        self.schedule = meta.get("schedule", [])
        self.spent_s = meta.get("spent_s", 0.0)
        self.saved_config = meta.get("config")  # what trained these weights, until `run` trains on

    def export(self, directory: Path) -> Path:
        """The EMA weights as an fp32 diffusers SDXL pipeline folder (what gets committed): stock
        diffusers then runs it on a CPU without a dtype argument (fp16 matmuls fail there)."""
        from diffusers import StableDiffusionXLPipeline

        with torch.no_grad():
            params = dict(self.trainable()) if self.phase == "unet" else {}
            for name, p in params.items():
                if name in self.ema:
                    p.copy_(self.ema[name])
        pipe = StableDiffusionXLPipeline(**self.c)
        pipe.to("cpu", torch.float32)
        pipe.save_pretrained(directory, safe_serialization=True)
        write_recipe(Path(directory), self)
        return Path(directory)
