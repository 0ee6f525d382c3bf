"""`decompose`: one image in, a run folder with a content LoRA and a style LoRA out.

This is the Python API behind `unziplora decompose`; the CLI only parses arguments. One entry
point for every method (`methods.Method`): UnZipLoRA and its ablations train here, the
baselines in `methods/baselines.py`.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import shutil
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from . import __version__
from .core.branch import Branch
from .core.callbacks import Callback, Previews, ProgressBar
from .run.checkpoint import CHECKPOINT_DIR, Checkpointer, check_resumable, fingerprint, read_record, restore_checkpoint
from .config import RunConfig, config_from_dict
from .core.data import centre_crop, crop_note, load_image
from .errors import TrainingInterrupted, UnZipLoRAError
from .generate import Conditioning, sample_images
from .core.inject import PROJECTIONS
from .methods import Method
from .run.modelcard import write_model_card
from .models.loading import check_resolution, load_pipeline, pick_device, pick_dtype
from .models.profiles import resolve_profile
from .core.prompts import check_length, training_prompts, unknown_words
from .run.folder import (
    LORA_WEIGHT_NAME,
    MANIFEST_FILE,
    RUN_FORMAT_VERSION,
    STATE_FILE,
    RunFolder,
    resumable_output_dir,
    save_grid,
    save_safetensors,
    write_text_atomic,
)
from .core.train import NonFiniteLoss, Trainer, branch_fractions

LIBRARIES = ("torch", "diffusers", "peft", "transformers", "accelerate", "safetensors")


def library_versions() -> dict[str, str]:
    found = {"unziplora": __version__}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def decompose(
    image,
    out_dir: str | Path,
    config: RunConfig,
    method: Method | str = Method.UNZIPLORA,
    *,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
    sources: dict[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunFolder:
    """Train the content and style LoRAs of one image with `method` and write the run folder.

    `image` is a path or a PIL image. `method` is UnZipLoRA (arXiv 2412.04465; the default),
    one of its ablations (their config overrides are applied here) or a baseline
    (`methods/baselines.py`). Inputs are checked before the model loads. An UnZipLoRA run is
    written to OUT.partial/ with a checkpoint every train.checkpoint_every steps and renamed to
    OUT when complete; `resume` continues an interrupted OUT.partial/ (same inputs only).
    `sources` (from `defaults.resolve_config`) says where each non-default setting came from; the
    manifest keeps it. `callbacks` (callbacks.py: ProgressReport, StopOnRequest) run after the
    built-in ones at every step; a stop they request ends like Ctrl-C (TrainingInterrupted, the
    checkpoint kept).
    """
    try:
        method = Method(method)
    except ValueError:
        raise UnZipLoRAError(f"unknown method {method!r}; use one of {', '.join(m.value for m in Method)}") from None
    device = pick_device(config.train.device)
    _check_sizes(config, device)
    if method.is_baseline:
        from .methods.baselines import decompose_baseline

        if resume:
            raise UnZipLoRAError(f"--resume is not available for --method {method.value}; rerun with --force")
        return decompose_baseline(image, out_dir, config, method, force=force, progress=progress, sources=sources,
                                  callbacks=callbacks)
    config = config.with_overrides(method.config_overrides)
    t_start = time.perf_counter()
    prompts = training_prompts(config.prompts)
    picture = load_image(image)
    out_dir = Path(out_dir)
    dtype = pick_dtype(config.train.mixed_precision, device)
    base_dir = Path(config.model.base_model).expanduser()
    profile = resolve_profile(config.model.profile, base_dir if base_dir.is_dir() else None)
    run_fingerprint = fingerprint(config, _image_sha256(picture))

    with resumable_output_dir(out_dir, force, resume, keep=_worth_keeping) as tmp:
        checkpointer = Checkpointer(tmp / CHECKPOINT_DIR, config.train.checkpoint_every, run_fingerprint)
        if resume and _holds_finished_run(tmp, run_fingerprint):
            print(f"note: {tmp} already holds every output of this run; finishing it")
        else:
            record = check_resumable(checkpointer.folder, run_fingerprint) if resume else None
            t0 = time.perf_counter()
            pipe = load_pipeline(config.model.base_model, config.model.revision, dtype)
            load_s = time.perf_counter() - t0
            _print_prompt_notes(pipe, prompts)
            note = crop_note(picture, config.train.resolution)
            if note:
                print(f"note: {note}")
            torch.manual_seed(config.train.seed)
            trainer = Trainer.prepare(config, pipe, picture, prompts, profile, device, dtype)
            if record is not None:
                restore_checkpoint(trainer, checkpointer.folder, record)
                checkpointer.saved_step = trainer.step
            every_step = [ProgressBar(progress), Previews(tmp / "previews", config.train.preview_every, _write_preview),
                          checkpointer, *callbacks]
            _fit(trainer, every_step, checkpointer, out_dir)

            t0 = time.perf_counter()
            _write_weights(trainer, tmp)
            picture.save(tmp / "input.png")
            save_grid([centre_crop(picture, config.train.resolution), *render_preview(trainer)], tmp / "preview.png",
                      columns=4, labels=["input", "content alone", "style alone", "together"])
            _write_loss(trainer, tmp)
            (tmp / "config.yaml").write_text(config.to_yaml())
            timings = {"load_s": load_s, **trainer.timings, "save_s": time.perf_counter() - t0}
            timings["total_s"] = time.perf_counter() - t_start
            manifest = base_manifest(config, profile, prompts, picture, sources)
            manifest.update({
                "method": method.value,
                "steps": trainer.step,
                "final_loss": trainer.history[-1].loss,
                "mask_fraction": branch_fractions(trainer.lora),
                "device": str(device),
                "dtype": str(dtype).replace("torch.", ""),
                "timings": {k: round(v, 3) for k, v in timings.items()},
                "files": {"content_lora": f"content_lora/{LORA_WEIGHT_NAME}",
                          "style_lora": f"style_lora/{LORA_WEIGHT_NAME}",
                          "state": STATE_FILE, "preview": "preview.png", "loss": "loss.csv"},
            })
            write_model_card(tmp, manifest, picture, out_dir)
            # The manifest last, in one rename: a folder with a manifest holds every output (_holds_finished_run).
            write_text_atomic(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2))
        # Only now, with every output written: until here a failure can still resume from it.
        shutil.rmtree(checkpointer.folder, ignore_errors=True)  # the finished run needs no optimiser state
    return RunFolder.open(out_dir)


def base_manifest(config: RunConfig, profile, prompts, picture, sources: dict[str, str] | None = None) -> dict:
    """The manifest fields every method writes: format, base model, prompts, input, config (with
    where each non-default setting came from), versions.

    `prompts["style_words"]` is what `<s>` stands for when generating, `identifier` what `<c>` does.
    """
    return {
        "format_version": RUN_FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": config.model.base_model,
        "profile": profile.to_dict(),
        "prompts": {
            "subject": config.prompts.subject, "style_words": config.prompts.style,
            "identifier": config.prompts.identifier, "combined": prompts.combined,
            "content": prompts.content, "style": prompts.style,
        },
        "input": {"sha256": _image_sha256(picture), "size": list(picture.size)},
        "seed": config.train.seed,
        "versions": library_versions(),
        "config": config.to_dict(),
        "config_sources": dict(sorted((sources or {}).items())),
    }


def _fit(trainer: Trainer, callbacks: list, checkpointer: Checkpointer, out_dir: Path) -> None:
    """Train; a Ctrl-C or a non-finite loss says where the last good checkpoint is."""
    try:
        trainer.fit(callbacks)
    except KeyboardInterrupt:
        if checkpointer.saved_step is None:
            raise TrainingInterrupted("interrupted before any checkpoint; nothing was written") from None
        raise TrainingInterrupted(
            f"interrupted; {checkpointer.where()}: continue with the same command plus --resume (--out {out_dir})"
        ) from None
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(exc.step, exc.value, checkpointer.where()) from None


def _check_sizes(config: RunConfig, device) -> None:
    """The training and sampling sizes against the base model and this machine, before anything loads."""
    for what, size in (("train.resolution (--resolution)", config.train.resolution),
                       ("sample.resolution", config.sample.resolution)):
        check_resolution(size, config.model.base_model, device, config.train.batch_size, what, config.model.revision)


def _worth_keeping(work: Path) -> bool:
    """Keep a failed OUT.partial when it has a committed checkpoint or every output to resume from."""
    if (work / MANIFEST_FILE).is_file():
        return True
    try:
        return read_record(work / CHECKPOINT_DIR) is not None
    except UnZipLoRAError:
        return False


def _holds_finished_run(work: Path, run_fingerprint: dict[str, str]) -> bool:
    """True when `work` holds every output of this run (killed after its manifest, while cleaning up);
    a finished run of other inputs is refused, as a checkpoint of other inputs is."""
    if not (work / MANIFEST_FILE).is_file():
        return False
    run = RunFolder.open(work)
    if not all((work / name).is_file() for name in run.manifest["files"].values()):
        return False
    saved = fingerprint(config_from_dict(run.manifest["config"]), run.manifest["input"]["sha256"])
    differ = [key for key, value in run_fingerprint.items() if saved.get(key) != value]
    if differ:
        raise UnZipLoRAError(f"cannot resume {work}: it holds a finished run made with another "
                             f"{' and '.join(differ)}; pass the same image, base model and options, or --force "
                             "to start over")
    return True


def _print_prompt_notes(pipe, prompts) -> None:
    for prompt in (prompts.combined, prompts.content, prompts.style):
        warning = check_length(pipe.tokenizer, prompt)
        if warning:
            print(f"note: {warning}")
    unknown = unknown_words(pipe.tokenizer, prompts.combined)
    if unknown:
        known = sorted(w[:-4] for w in pipe.tokenizer.get_vocab() if w.endswith("</w>") and len(w) > 5)
        print(f"warning: the base model never learned the word(s) {', '.join(unknown)}; it knows only: "
              f"{', '.join(known)}")


def _write_weights(trainer: Trainer, folder: Path) -> None:
    """The full state for combined use (A, B, m, M of both branches), and each branch alone as an
    ordinary diffusers LoRA, M (.) B A without the mergers, as the authors export it."""
    from diffusers import StableDiffusionXLPipeline

    lora = trainer.lora
    metadata = {"format": "unziplora", "format_version": str(RUN_FORMAT_VERSION), "rank": str(lora.rank)}
    save_safetensors(lora.state_dict(), folder / STATE_FILE, metadata)
    for branch in (Branch.CONTENT, Branch.STYLE):
        StableDiffusionXLPipeline.save_lora_weights(
            folder / f"{branch.value}_lora",
            unet_lora_layers=lora.ordinary_lora(branch),
            weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True,
            # alpha = r: the update is applied at scale 1, as trained.
            unet_lora_adapter_metadata={
                "r": lora.rank, "lora_alpha": lora.rank, "target_modules": list(PROJECTIONS),
            },
        )


def render_preview(trainer: Trainer, seed_count: int = 1) -> list:
    """Content alone (p_c), style alone (p_s), together (p with p_c, p_s): one image each."""
    e, lora, cfg = trainer.embeds, trainer.lora, trainer.config
    sample = type(cfg.sample)(steps=cfg.sample.steps, guidance_scale=cfg.sample.guidance_scale,
                              seeds=cfg.sample.seeds[:seed_count])
    images = []
    plans = [
        ({Branch.CONTENT}, Conditioning(e["content"], e["content_pooled"])),
        ({Branch.STYLE}, Conditioning(e["style"], e["style_pooled"])),
        ({Branch.CONTENT, Branch.STYLE}, Conditioning(e["combined"], e["combined_pooled"], e["content"], e["style"])),
    ]
    for branches, cond in plans:
        lora.set_active(branches)
        images += sample_images(trainer.pipe, cond, sample, cfg.train.resolution)
    lora.set_active({Branch.CONTENT, Branch.STYLE})
    return images


def _write_preview(trainer: Trainer, path: Path) -> None:
    save_grid(render_preview(trainer), path, columns=3, labels=["content", "style", "together"])


def _write_loss(trainer: Trainer, folder: Path) -> None:
    with open(folder / "loss.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "mse", "orth", "refresh"])
        for log in trainer.history:
            writer.writerow([log.step, f"{log.loss:.6f}", f"{log.mse:.6f}", f"{log.orth:.6f}", int(log.refresh)])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [log.step for log in trainer.history]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    mse = [log.mse for log in trainer.history]
    ax.plot(steps, mse, label="diffusion MSE", lw=0.6, alpha=0.45)
    # one step's MSE swings with its random timestep; a running mean shows the trend
    window = max(1, min(25, len(mse) // 10))
    running = [sum(w) / len(w) for w in (mse[max(0, i - window + 1):i + 1] for i in range(len(mse)))]
    ax.plot(steps, running, label=f"MSE, mean of {window} steps", lw=1.2, color="C0")
    ax.plot(steps, [log.orth for log in trainer.history], label="L_orth", lw=0.8)
    for log in trainer.history:
        if log.refresh:
            ax.axvline(log.step, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step (dotted: mask refresh)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png")
    plt.close(fig)


def _image_sha256(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()
