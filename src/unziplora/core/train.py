"""The UnZipLoRA training loop (arXiv 2412.04465, Sec. 3; defaults in docs/method.md §6).

Read top to bottom: prepare (encode prompts once, cache latents, inject the two-branch
layers), then `steps` optimiser steps. Every `refresh_every` steps one step runs unmasked
with frozen mergers and no orthogonality loss; its gradients score the columns and the hard
masks grow. All other steps train masked with loss = MSE + lambda * L_orth. Logging,
progress and previews are callbacks.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler

from ..names import Branch, Role
from ..config import RunConfig
from .data import CroppedLatents
from ..errors import UnZipLoRAError
from .columns import CONE_LOSS_SCALE
from .inject import TwoBranchLoRA, inject_two_branch_lora
from ..models.profiles import Profile, uniform_profile
from ..models.families import SDXL, Family, family_of
from ..models.loading import to_device
from .prompts import EmbeddedTriple, PromptTriple, encode_triple
from .objective import Denoising, denoising_for


log = logging.getLogger("unziplora")


class NonFiniteLoss(UnZipLoRAError):
    """The loss became NaN or inf; training stops before the step's update."""

    def __init__(self, step: int, value: float, where: str = ""):
        self.step, self.value = step, value
        kept = f"; {where}" if where else ""
        super().__init__(f"the loss became {value} at step {step}{kept}; lower lora.lr or use fp32, then start over "
                         "with --force")


@dataclass
class StepLog:
    step: int
    loss: float
    mse: float
    orth: float
    refresh: bool


@dataclass
class Trainer:
    """Everything the loop needs, prepared once. Build it with `Trainer.prepare`."""

    config: RunConfig
    pipe: object
    lora: TwoBranchLoRA
    latents: CroppedLatents
    embeds: EmbeddedTriple  # p, p_c, p_s: text states (1, 77, D) and pooled (1, P) where the family has one
    device: torch.device
    dtype: torch.dtype
    optimizer: torch.optim.Optimizer
    noise_scheduler: DDPMScheduler
    generator: torch.Generator
    scaler: torch.amp.GradScaler
    history: list[StepLog] = field(default_factory=list)
    step: int = 0
    refresh_pending: bool = False  # a refresh whose gradients overflowed (fp16) is retried next step
    should_stop: bool = False  # set by a callback (callbacks.StopOnRequest): stop between steps as Ctrl-C does
    timings: dict[str, float] = field(default_factory=dict)
    # Seconds spent in the last step's forward (through the loss), backward and update (bench speed).
    last_phases: dict[str, float] = field(default_factory=dict)
    family: Family = SDXL  # what the UNet is conditioned on beside the text (models/families.py)
    objective: object = None  # the denoising loss and its conditioning (`denoising_for`); None: the UNet's
    # Per mask refresh: (step, how many layer branches' cone scores all tied); the manifest keeps it.
    cone_ties: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        if self.objective is None:
            self.objective = Denoising(self.noise_scheduler, self.family)

    @classmethod
    def prepare(cls, config, pipe, image, prompts: PromptTriple, profile: Profile, device, dtype):
        """Encode the three prompts once and release the text encoders; inject the LoRA; build the optimiser."""
        t0 = time.perf_counter()
        for encoder in text_encoders(pipe):
            encoder.to(device)
        embeds = encode_triple(pipe, prompts, device)
        # The text encoders are not needed again: free them before the loop.
        release_text_encoders(pipe)

        pipe.vae.to(device)
        latents = CroppedLatents(image, config.train.resolution, pipe.vae, device)
        family = family_of(pipe)
        objective = denoising_for(pipe)  # an unsupported objective fails here, before the loop
        unet = family.denoiser_of(pipe)
        unet.requires_grad_(False)
        to_device(unet, device, dtype)
        if not config.masks.enabled:
            profile = uniform_profile(Role.ALL, Role.ALL, profile.name + "-all-columns")
        elif not config.model.block_separation:
            profile = profile.without_block_roles()
        lora = inject_two_branch_lora(unet, profile, config.lora.rank, config.lora.init, config.train.seed)
        if config.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = build_optimizer(config, lora)
        generator = torch.Generator().manual_seed(config.train.seed)
        trainer = cls(
            config, pipe, lora, latents, EmbeddedTriple(*(e.to(device) for e in (embeds.combined, embeds.content,
                                                                                  embeds.style))), device, dtype,
            optimizer, objective.scheduler, generator,
            # fp16 gradients of small LoRA updates underflow without loss scaling.
            torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), family=family, objective=objective,
        )
        trainer.timings["prepare_s"] = time.perf_counter() - t0
        return trainer

    # ----- one step ---------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.config.train.steps

    @property
    def max_grad_norm(self) -> float:
        return self.config.train.max_grad_norm

    @property
    def unet(self):
        """The denoising network the LoRA layers sit in (SDXL, SD: the UNet; FLUX: the transformer)."""
        return self.family.denoiser_of(self.pipe)

    def is_refresh_step(self, step: int) -> bool:
        masks = self.config.masks
        return masks.enabled and step % masks.refresh_every == 0

    def unet_kwargs(self, batch: int) -> dict:
        """The UNet's conditioning for a batch: p for the base, p_c and p_s for the branches, and what
        else the family conditions on (SDXL: p's pooled embedding and the time ids generation uses)."""
        return self.objective.conditioning(self.embeds, self.latents.resolution, batch, self.device, self.dtype)

    def cone_grad_scale(self) -> float:
        """The loss scale the cone scores are computed at (`columns.CONE_LOSS_SCALE`): the
        GradScaler's scale of this step under fp16, as in the authors' fp16 run, else 2^16."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else CONE_LOSS_SCALE

    def train_step(self) -> StepLog:
        """One optimiser step; a refresh step also grows the masks (arXiv 2412.04465, Sec. 3)."""
        cfg, step = self.config, self.step
        t0 = time.perf_counter()
        refresh = self.is_refresh_step(step) or self.refresh_pending
        self.lora.set_masking(not refresh)
        self.lora.set_mergers_trainable(cfg.masks.enabled and not refresh)

        samples = [self.latents.sample(self.generator) for _ in range(cfg.train.batch_size)]
        latents = torch.cat([s[0] for s in samples]).to(self.device)
        kwargs = self.unet_kwargs(len(samples))
        mse = self.objective.loss(self.unet, latents, self.generator, self.dtype, kwargs)
        use_orth = cfg.masks.enabled and not refresh and cfg.masks.orth_weight > 0
        orth = self.lora.orthogonality_loss() if use_orth else torch.zeros((), device=self.device)
        loss = mse + cfg.masks.orth_weight * orth
        if not torch.isfinite(loss):
            raise NonFiniteLoss(step, loss.item())

        self.optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        self.scaler.scale(loss).backward()
        t2 = time.perf_counter()
        self.scaler.unscale_(self.optimizer)  # clipping needs true gradients; cone scores rescale them
        if refresh:
            grads = [p.grad for p in self.lora.lora_parameters() if p.grad is not None]
            self.refresh_pending = not all(torch.isfinite(g).all() for g in grads)
            if not self.refresh_pending:  # the scaler skips this step too; score again next step
                # Scored before clipping, at the loss scale, as the authors do (cone_grad_scale).
                tied = self.lora.refresh_masks(cfg.masks.fraction, cfg.masks.cone_threshold, self.cone_grad_scale())
                self.cone_ties.append((step, len(tied)))
                log_ties(step, tied, cfg.masks.cone_threshold)
        else:
            self.lora.restrict_merger_grads()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip_gradients(params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lora.clamp_mergers()
        self.lora.set_masking(True)
        self.last_phases = {"forward": t1 - t0, "backward": t2 - t1, "update": time.perf_counter() - t2}
        self.step += 1
        log = StepLog(step, loss.item(), mse.item(), orth.item(), refresh)
        self.history.append(log)
        return log

    def fit(self, callbacks=()) -> None:
        """Train to config.train.steps (`fit`); the masks end switched on."""
        fit(self, callbacks)
        self.lora.set_masking(True)


def fit(loop, callbacks=()) -> None:
    """The one training loop every method runs: `loop.train_step()` until `loop.step` reaches
    `loop.total_steps`, the callbacks (callbacks.py) seeing the loop after every step.

    Ctrl-C or SIGTERM (or a callback setting `loop.should_stop`) stops after the current step: every
    callback's on_interrupt runs (a checkpoint is saved), then KeyboardInterrupt propagates. Before
    the first step has finished there is nothing new to save, so it stops at once (a first step can
    take minutes at a large size).
    `loop.timings` gets train_s and s_per_step.
    """
    t0 = time.perf_counter()
    first = loop.step
    for cb in callbacks:
        cb.on_start(loop)
    with _interrupt_between_steps() as (interrupted, finished):
        while loop.step < loop.total_steps:
            log = loop.train_step()
            finished.append(True)
            for cb in callbacks:
                cb.on_step(loop, log)
            if interrupted or loop.should_stop:
                for cb in callbacks:
                    cb.on_interrupt(loop)
                raise KeyboardInterrupt
    loop.timings["train_s"] = time.perf_counter() - t0
    loop.timings["s_per_step"] = loop.timings["train_s"] / max(1, loop.step - first)
    for cb in callbacks:
        cb.on_end(loop)


# What a user (Ctrl-C) and a scheduler (Slurm, Kubernetes, systemd: SIGTERM) send to stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _interrupt_between_steps():
    """Turn the first Ctrl-C or SIGTERM into a flag the loop reads between steps, so a checkpoint
    never holds half a step (parameters updated, step counter not), and say so at once. Before any
    step has finished (the `finished` list is empty) and at a second one it interrupts at once."""
    flag: list[bool] = []
    finished: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag, finished  # signal handlers can only be set from the main thread
        return
    # None: a handler not set from Python; put the default back then
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in STOP_SIGNALS}

    def handler(signum, frame):
        for sig, before in previous.items():
            signal.signal(sig, before)
        if not finished:
            raise KeyboardInterrupt
        flag.append(True)
        # os.write: a print here could re-enter a print the signal interrupted
        os.write(2, b"\nstopping after this step to save a checkpoint (Ctrl-C again stops now, without it)\n")

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield flag, finished
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def log_ties(step: int, tied: list[str], threshold: float) -> None:
    """Where some layers' cone scores all tied at a refresh, the threshold told no column apart there:
    one log line per refresh (shown with --verbose), naming the first such layer and counting them.
    Ties are common and mostly harmless, so the run itself says at most one sentence (`tie_note`)."""
    if tied:
        log.info("step %d: %d layer branch%s tie (first: %s): every column has the same cone score at "
                 "masks.cone_threshold %g; their columns are picked by the cone's magnitude alone (by index where "
                 "that ties too)", step, len(tied), "es" if len(tied) > 1 else "", tied[0], threshold)


def tie_record(loop) -> dict | None:
    """The manifest's `cone_score_ties`: how many layer branches the refreshes score (the masked ones)
    and, per refresh, how many of them tied."""
    ties = getattr(loop, "cone_ties", None)
    if ties is None:
        return None
    scored = sum(role is Role.MASKED for layer in loop.lora.layers.values() for role in layer.roles.values())
    return {"branches": scored, "per_refresh": [[step, n] for step, n in ties]}


def tie_note(loop) -> str | None:
    """One plain sentence when ties decided much of the masks: at some refresh at least half of the
    layer branches could not tell their columns apart by the cone score. None otherwise."""
    record = tie_record(loop)
    if not record or not record["per_refresh"]:
        return None
    worst = max(n for _, n in record["per_refresh"])
    if 2 * worst < record["branches"]:
        return None
    return (f"the column scores tied in up to {worst} of {record['branches']} layer branches, so their columns were "
            "chosen by gradient size alone and the split may be weaker (details: manifest.json cone_score_ties, "
            "or --verbose)")


def text_encoders(pipe) -> list:
    """The pipeline's text encoders (SDXL has two, SD one)."""
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


def release_text_encoders(pipe) -> None:
    """Free the text encoders once every prompt is encoded: training never needs them again (what the
    family's unconditional input needs for previews is encoded first)."""
    family_of(pipe).keep_unconditional(pipe)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()


def clip_gradients(params, max_norm: float) -> None:
    """Clip the gradients' joint norm to `max_norm` (0: no clipping, e.g. textual inversion's reference)."""
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def build_optimizer(config: RunConfig, lora: TwoBranchLoRA) -> torch.optim.Optimizer:
    """AdamW with two learning rates: LoRA matrices 5e-5, mergers 5e-3 (the authors' train.sh)."""
    return make_optimizer([
        {"params": lora.lora_parameters(), "lr": config.lora.lr},
        {"params": lora.merger_parameters(), "lr": config.lora.merger_lr},
    ], config.train)


def make_optimizer(groups: list[dict], train) -> torch.optim.Optimizer:
    """The run's optimiser over parameter groups, with its betas, eps and weight decay: torch's
    AdamW, or bitsandbytes' 8-bit AdamW (train.use_8bit_adam; the UnZipLoRA authors' and
    B-LoRA's scripts default to it), which needs CUDA."""
    kwargs = {"betas": tuple(train.adam_betas), "eps": train.adam_eps, "weight_decay": train.weight_decay}
    if not train.use_8bit_adam:
        return adamw(groups, **kwargs)
    devices = {p.device.type for g in groups for p in g["params"]}
    if devices != {"cuda"}:
        raise UnZipLoRAError("8-bit AdamW (--use-8bit-adam) runs on CUDA only (bitsandbytes); drop it on this "
                             "machine")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UnZipLoRAError(
            "8-bit AdamW needs bitsandbytes: pip install 'unziplora[bnb]', or drop --use-8bit-adam"
        ) from None
    return bnb.optim.AdamW8bit(groups, **kwargs)


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, fused where torch has a fused kernel for the parameters' device.

    Same update as the default implementation; on CPU the fused kernel steps two LoRA branches
    of the SDXL UNet (186 M values) ~7x faster than foreach (measured: 0.09 s vs 0.67 s per 92 M).
    """
    flat = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else list(params)
    if {p.device.type for p in flat} <= {"cpu", "cuda"}:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def branch_fractions(lora: TwoBranchLoRA) -> dict[str, float]:
    return {b.value: round(lora.mask_fraction(b), 4) for b in (Branch.CONTENT, Branch.STYLE)}
