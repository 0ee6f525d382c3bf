"""`decompose`: one image in, a run folder with a content LoRA and a style LoRA out.

This is the Python API behind `unziplora decompose`; the CLI only parses arguments. One entry
point and one loop for every method: the method's plugin (methods/) prepares the loop, says what
to write and what to record; everything around it (inputs checked before loading, the run folder
written atomically, checkpoints, previews, the loss curve, the manifest and model card) is here.
"""

from __future__ import annotations

import contextlib
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
from .config import RunConfig
from .core.callbacks import Callback, Previews, ProgressBar
from .core.data import centre_crop, crop_note, load_image
from .core.inject import attention_modules
from .names import Method
from .core.sampling import check_sampling
from .core.prompts import check_length, training_prompts, unknown_words_warning
from .core.train import NonFiniteLoss, fit, tie_note
from .errors import TrainingInterrupted, UnZipLoRAError
from .methods import plugin, spec_of
from .models.loading import (check_native_size, check_quantization, check_resolution, pick_device, pick_dtype,
                             quietly)
from .run.checkpoint import CHECKPOINT_DIR, Checkpointer, check_resumable, fingerprint, read_record, restore_checkpoint
from .run.manifest import Manifest
from .run.folder import (MANIFEST_FILE, RUN_FORMAT_VERSION, RunFolder, check_output, resumable_output_dir, save_grid,
                         write_text_atomic)
from .run.modelcard import write_model_card
from .run.spec import RunSpec

LIBRARIES = ("torch", "diffusers", "peft", "transformers", "accelerate", "safetensors")


def library_versions() -> dict[str, str]:
    found = {"unziplora": __version__}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@quietly
def decompose(
    image,
    out_dir: str | Path,
    config: RunConfig | RunSpec,
    method: Method | str = Method.UNZIPLORA,
    *,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
    sources: dict[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
    allow_large_resolution: bool = False,
) -> RunFolder:
    """Train the content and style LoRAs of one image with `method` and write the run folder.

    `image` is a path or a PIL image. `config` is the resolved run (`methods.resolve_spec`), or a
    RunConfig with `method` (UnZipLoRA, arXiv 2412.04465, the default; one of its ablations; or a
    baseline) and `sources` (where each non-default setting came from, from `resolve_config`).
    Inputs are checked before the model loads. The run is written to OUT.partial/ and renamed to
    OUT when complete; a resumable method (UnZipLoRA) keeps a checkpoint every
    train.checkpoint_every steps and `resume` continues an interrupted OUT.partial/ (same inputs
    only). `callbacks` (core/callbacks.py: ProgressReport, StopOnRequest) run after the built-in
    ones at every step; a stop they request ends like Ctrl-C (TrainingInterrupted, the checkpoint kept).
    A size more than twice the base model's own is refused unless `allow_large_resolution`.
    """
    spec = config if isinstance(config, RunSpec) else spec_of(config, method, sources)
    chosen, cfg = plugin(spec.method), spec.config
    device = pick_device(cfg.train.device)
    _check_sizes(spec, device, allow_large_resolution)
    chosen.check(spec)
    check_sampling(spec.base.family, cfg.sample)  # previews sample as the family's pipeline can
    if resume and not chosen.resumable:
        raise UnZipLoRAError(f"--resume is not available for --method {spec.method.value}; rerun with --force")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    check_output(out_dir, [image, spec.base.source], force, "decompose")  # an input is never replaced
    prompts = training_prompts(cfg.prompts)
    picture = load_image(image)
    out_dir = Path(out_dir)
    dtype = pick_dtype(cfg.train.mixed_precision, device, spec.base.family)
    check_quantization(cfg.model.quantize_base, device)
    profile = spec.profile()
    run_fingerprint = fingerprint(cfg, _image_sha256(picture), spec.base)

    with resumable_output_dir(out_dir, force, resume, keep=_worth_keeping) as tmp, contextlib.ExitStack() as stack:
        checkpointer = Checkpointer(tmp / CHECKPOINT_DIR, cfg.train.checkpoint_every if chosen.resumable else 0,
                                    run_fingerprint)
        if resume and _holds_finished_run(tmp, run_fingerprint, spec):
            print(f"note: {tmp} already holds every output of this run; finishing it")
        else:
            record = check_resumable(checkpointer.folder, run_fingerprint) if resume else None
            t0 = time.perf_counter()
            pipe = spec.base.load(dtype, cfg.model.quantize_base)
            load_s = time.perf_counter() - t0
            profile.check_against([name for name, _ in attention_modules(spec.base.family.denoiser_of(pipe))])
            _print_prompt_notes(pipe, prompts)
            note = crop_note(picture, cfg.train.resolution)
            if note:
                print(f"note: {note}")
            torch.manual_seed(cfg.train.seed)
            t0 = time.perf_counter()
            loop = chosen.prepare(spec, pipe, picture, prompts, profile, device, dtype, tmp, progress=progress,
                                  callbacks=callbacks)
            prepare_s = time.perf_counter() - t0
            training = training_record(loop, cfg, dtype)
            if record is not None:
                restore_checkpoint(loop, checkpointer.folder, record)
                checkpointer.saved_step = loop.step
                earlier = record.get("elapsed_s")
                checkpointer.earlier_s = float(earlier) if isinstance(earlier, (int, float)) else 0.0
            every_step = [ProgressBar(progress), Previews(tmp / "previews", cfg.train.preview_every, _preview_writer(chosen)),
                          *([checkpointer] if chosen.resumable else []), *callbacks]
            _fit(loop, every_step, checkpointer, out_dir)
            stack.enter_context(_finished_steps_kept(loop, checkpointer, chosen.resumable, out_dir))
            ties = tie_note(loop)
            if ties:
                print(f"note: {ties}")

            t0 = time.perf_counter()
            files = chosen.write_weights(loop, tmp)
            picture.save(tmp / "input.png")
            t_preview = time.perf_counter()
            preview = None if cfg.train.no_preview else chosen.preview(loop)
            preview_s = time.perf_counter() - t_preview
            if preview:
                save_grid([centre_crop(picture, cfg.train.resolution), *preview], tmp / "preview.png",
                          columns=4, labels=["input", "content alone", "style alone", "together"])
                files["preview"] = "preview.png"
            _write_loss(loop, tmp)
            files["loss"] = "loss.csv"
            (tmp / "config.yaml").write_text(cfg.to_yaml())
            timings = {"load_s": load_s, "prepare_s": prepare_s, **loop.timings, "save_s": time.perf_counter() - t0,
                       "preview_s": preview_s}  # part of save_s
            # every process that worked on the run: a resumed run's earlier ones too
            timings["total_s"] = time.perf_counter() - t_start + checkpointer.earlier_s
            if checkpointer.earlier_s:
                timings["earlier_processes_s"] = checkpointer.earlier_s
            manifest = base_manifest(spec, profile, prompts, picture)
            manifest.update({
                "method": spec.method.value,
                "steps": loop.step,
                "device": str(device),
                "dtype": str(dtype).replace("torch.", ""),
                "training": training,
                "timings": {k: round(v, 3) for k, v in timings.items()},
                "files": files,
                **chosen.manifest_fields(spec, loop),
            })
            record = Manifest.from_dict(manifest, tmp / MANIFEST_FILE)  # the schema every reader checks
            write_model_card(tmp, record, picture, out_dir, chosen.card, spec.base.family.pipeline)
            # The manifest last, in one rename: a folder with a manifest holds every output (_holds_finished_run).
            write_text_atomic(tmp / MANIFEST_FILE, json.dumps(record.to_dict(), indent=2))
        # Only now, with every output written: until here a failure can still resume from it.
        shutil.rmtree(checkpointer.folder, ignore_errors=True)  # the finished run needs no optimiser state
    return RunFolder.open(out_dir)


def training_record(loop, config: RunConfig, dtype) -> dict:
    """What training actually used, read off the loop (not the config): the manifest's `training`."""
    group = loop.optimizer.param_groups[0]
    return {
        "mixed_precision": config.train.mixed_precision, "dtype": str(dtype).replace("torch.", ""),
        "grad_scaler": loop.scaler.is_enabled(), "optimizer": type(loop.optimizer).__name__,
        "adam_betas": list(group["betas"]), "adam_eps": group["eps"], "weight_decay": group["weight_decay"],
        "max_grad_norm": loop.max_grad_norm, "gradient_checkpointing": bool(loop.unet.is_gradient_checkpointing),
    }


def base_manifest(spec: RunSpec, profile, prompts, picture) -> dict:
    """The manifest fields every method writes: format, base model, prompts, input, config (with
    where each non-default setting came from), versions.

    `prompts["style_words"]` is what `<s>` stands for when generating, `identifier` what `<c>` does.
    """
    config = spec.config
    return {
        "format_version": RUN_FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": spec.base.source,
        "profile": profile.to_dict(),
        "prompts": {
            "subject": config.prompts.subject, "style_words": plugin(spec.method).style_words(config),
            "identifier": config.prompts.identifier, "combined": prompts.combined,
            "content": prompts.content, "style": prompts.style,
        },
        "input": {"sha256": _image_sha256(picture), "size": list(picture.size)},
        "seed": config.train.seed,
        "versions": library_versions(),
        "config": config.to_dict(),
        "config_sources": dict(sorted(spec.sources.items())),
    }


def _fit(loop, callbacks: list, checkpointer: Checkpointer, out_dir: Path) -> None:
    """Train; a Ctrl-C or a non-finite loss says where the last good checkpoint is."""
    try:
        fit(loop, callbacks)
    except KeyboardInterrupt:
        if checkpointer.saved_step is None:
            raise TrainingInterrupted("interrupted before any checkpoint; nothing was written") from None
        raise TrainingInterrupted(
            f"interrupted; {checkpointer.where()}: continue with the same command plus --resume (--out {out_dir})"
        ) from None
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(exc.step, exc.value, checkpointer.where()) from None


@contextlib.contextmanager
def _finished_steps_kept(loop, checkpointer: Checkpointer, resumable: bool, out_dir: Path):
    """Ctrl-C or SIGTERM while the outputs are written: the trained steps are saved as a checkpoint
    (the outputs are then written by --resume) and the message says so."""
    try:
        yield
    except KeyboardInterrupt:
        if not resumable:
            raise TrainingInterrupted(f"interrupted while writing the outputs after {loop.step} steps; this method "
                                      "keeps no checkpoint, nothing was kept") from None
        if checkpointer.saved_step != loop.step:
            checkpointer.save(loop)
        raise TrainingInterrupted(f"interrupted while writing the outputs; all {loop.step} steps are trained and "
                                  f"{checkpointer.where()}: the same command plus --resume writes them "
                                  f"(--out {out_dir})") from None


def _check_sizes(spec: RunSpec, device, allow_large: bool = False) -> None:
    """The training and sampling sizes against the base model and this machine, before anything loads."""
    config = spec.config
    for what, size in (("train.resolution (--resolution)", config.train.resolution),
                       ("sample.resolution", config.sample.resolution)):
        check_resolution(size, spec.base, device, config.train.batch_size, what)
        warning = check_native_size(size, spec.base, allow_large, what)
        if warning:
            print(f"warning: {warning}")


def _worth_keeping(work: Path) -> bool:
    """Keep a failed OUT.partial when it has a committed checkpoint or every output to resume from."""
    if (work / MANIFEST_FILE).is_file():
        return True
    try:
        return read_record(work / CHECKPOINT_DIR) is not None
    except UnZipLoRAError:
        return False


def _holds_finished_run(work: Path, run_fingerprint: dict[str, str], spec: RunSpec) -> bool:
    """True when `work` holds every output of this run (killed after its manifest, while cleaning up);
    a finished run of other inputs is refused, as a checkpoint of other inputs is."""
    if not (work / MANIFEST_FILE).is_file():
        return False
    run = RunFolder.open(work)
    if not all((work / name).is_file() for name in run.manifest.files.values()):
        return False
    saved = fingerprint(run.manifest.config, run.manifest.input["sha256"], spec.base)
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
    unknown = unknown_words_warning(pipe.tokenizer, prompts.combined)
    if unknown:
        print(f"warning: {unknown}")


def _preview_writer(chosen):
    """What the Previews callback calls: the method's preview grid, when it has one."""
    def write(loop, path: Path) -> None:
        images = chosen.preview(loop)
        if images:
            save_grid(images, path, columns=3, labels=["content", "style", "together"])
    return write


def _write_loss(trainer, folder: Path) -> None:
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
