"""What the page's buttons ask for, checked at once and then run by the worker through the Python API.

Each `submit_*` function checks its input while the page waits (a bad image, a taken or unsafe
run name, a setting out of range: one UnZipLoRAError, nothing written), then queues a job that
calls the same function the command line does: `decompose`, `generate`. Nothing here trains or
samples by itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ...names import Mode
from ...core.callbacks import Progress, ProgressReport, StopOnRequest
from ...errors import UnZipLoRAError
from ...methods import Method, plugin
from ...run.outputs import partial_dir
from .jobs import Job, Worker
from .runs import RunsFolder

MAX_IMAGES_PER_JOB = 16  # seeds x images per seed: a typo should not queue an hour of sampling


@dataclass(frozen=True)
class DecomposeRequest:
    """The page's decompose form; None means the layered default (defaults.py)."""

    subject: str
    style: str
    method: str = Method.UNZIPLORA.value
    steps: int | None = None
    rank: int | None = None
    resolution: int | None = None
    seed: int | None = None
    previews: int = 4  # preview grids drawn per run (0: none); baselines draw none

    def overrides(self, base_model: str) -> dict:
        return {
            "prompts.subject": self.subject.strip(), "prompts.style": self.style.strip(),
            "model.base_model": base_model, "train.steps": self.steps, "lora.rank": self.rank,
            "train.resolution": self.resolution, "train.seed": self.seed,
        }


def resolve(request: DecomposeRequest, base_model: str):
    """The run's config as the command line would resolve it (defaults.resolve_config), with
    train.preview_every set to draw `request.previews` grids in the run."""
    from ...methods import resolve_config

    try:
        method = Method(request.method)
    except ValueError:
        raise UnZipLoRAError(f"unknown method {request.method!r}; use one of "
                             f"{', '.join(m.value for m in Method)}") from None
    if request.previews < 0:
        raise UnZipLoRAError(f"previews per run must be 0 or more, got {request.previews}")
    resolved = resolve_config(request.overrides(base_model), method=method)
    if request.previews and plugin(method).has_preview:
        every = max(1, resolved.config.train.steps // request.previews)
        resolved = resolve_config({**request.overrides(base_model), "train.preview_every": every}, method=method)
    return method, resolved


def form_defaults(base_model: str, method: str) -> dict[str, int]:
    """What the form's numbers are when left as they are: the method's and base model's defaults."""
    from ...methods import resolve_config

    config = resolve_config({"model.base_model": base_model}, method=Method(method)).config
    return {"steps": config.train.steps, "rank": config.lora.rank, "resolution": config.train.resolution,
            "seed": config.train.seed}


def submit_decompose(worker: Worker, runs: RunsFolder, base_model: str, upload: str | Path | None, name: str,
                     request: DecomposeRequest, max_upload_bytes: int) -> Job:
    """Check the upload, the name and the settings, keep them beside the run, and queue the training."""
    from ...core.data import load_image

    if not upload:
        raise UnZipLoRAError("drop an image first (PNG, JPEG, WebP, ...)")
    upload = Path(upload)
    if upload.stat().st_size > max_upload_bytes:
        raise UnZipLoRAError(f"{upload.name} is {upload.stat().st_size / 2**20:.1f} MiB; the page takes images up to "
                             f"{max_upload_bytes / 2**20:.0f} MiB (downscale it, or start the page with a larger "
                             "--max-upload-mb)")
    load_image(upload)  # the command line's checks and messages, before anything is queued
    if not request.subject.strip() or not request.style.strip():
        raise UnZipLoRAError("type the subject word (e.g. cat) and the style words (e.g. watercolor)")
    method, resolved = resolve(request, base_model)
    if name.strip():
        name = name.strip()
        runs.claim(name)  # atomic: a second session asking for the same name now is refused here
    else:
        name = runs.claim_free_name(request.subject, request.style)
    try:
        image = runs.keep_request(name, upload, dataclasses.asdict(request))
        return worker.submit("decompose", f"decompose {name}", _decompose_work(runs, name, image, method, resolved),
                             name, Progress(0, resolved.config.train.steps), on_cancel=lambda: runs.forget(name))
    except BaseException:
        runs.forget(name)  # the claim is released: nothing was queued
        raise


def submit_resume(worker: Worker, runs: RunsFolder, base_model: str, name: str) -> Job:
    """Queue the continuation of an interrupted run with the image and settings the page kept."""
    if name not in runs.interrupted():
        raise UnZipLoRAError(f"run {name!r} has no checkpoint to resume from")
    image, kept = runs.request(name)
    fields = {f.name for f in dataclasses.fields(DecomposeRequest)}
    request = DecomposeRequest(**{k: v for k, v in kept.items() if k in fields})
    method, resolved = resolve(request, base_model)
    return worker.submit("decompose", f"resume {name}",
                         _decompose_work(runs, name, image, method, resolved, resume=True), name,
                         Progress(0, resolved.config.train.steps))


def _decompose_work(runs: RunsFolder, name: str, image: Path, method: Method, resolved, resume: bool = False):
    from ...decompose import decompose

    def work(job: Job) -> str:
        config = resolved.config
        callbacks = [ProgressReport(job.report, config.train.steps), StopOnRequest(job.cancel_event)]
        try:
            decompose(image, runs.path(name), config, method, progress=False, resume=resume,
                      sources=resolved.sources, callbacks=callbacks)
        except BaseException:
            if name not in runs.interrupted():  # nothing to resume from: drop the kept image
                runs.forget(name)
            runs.release(name)  # resumable: the kept image stays, the name is no longer being worked on
            raise
        runs.forget(name)
        return name

    return work


def previews_of(runs: RunsFolder, name: str) -> list[Path]:
    """The preview grids drawn so far: in RUN.partial/ while training, in RUN/ after."""
    out = runs.path(name)
    for folder in (partial_dir(out) / "previews", out / "previews"):
        if folder.is_dir():
            return sorted(folder.glob("step_*.png"))
    return []


@dataclass(frozen=True)
class GenerateRequest:
    mode: str
    prompt: str
    run: str | None = None  # content, style, both
    content_run: str | None = None  # cross
    style_run: str | None = None  # cross
    seeds: str = ""  # "0 1 2"; empty: the run's
    steps: int | None = None
    guidance: float | None = None
    num_images: int = 1


def parse_seeds(text: str | None) -> list[int] | None:
    words = (text or "").replace(",", " ").split()
    try:
        return [int(w) for w in words] or None
    except ValueError:
        raise UnZipLoRAError(f"seeds {text!r}: give whole numbers separated by spaces, e.g. 0 1 2") from None


def submit_generate(worker: Worker, runs: RunsFolder, request: GenerateRequest) -> Job:
    """Check the sources and settings, then queue one `generate` call."""
    from ...generate import generate

    try:
        mode = Mode(request.mode)
    except ValueError:
        raise UnZipLoRAError(f"unknown mode {request.mode!r}; use one of {', '.join(m.value for m in Mode)}") from None
    if not request.prompt.strip():
        raise UnZipLoRAError('type a prompt, e.g. "A <c> cat in <s> style on a boat"')
    seeds = parse_seeds(request.seeds)
    num_images = int(request.num_images or 1)
    if num_images < 1 or num_images * len(seeds or [0]) > MAX_IMAGES_PER_JOB:
        raise UnZipLoRAError(f"images per seed x seeds must be between 1 and {MAX_IMAGES_PER_JOB}")
    if mode is Mode.CROSS:
        if not request.content_run or not request.style_run:
            raise UnZipLoRAError("cross mode: pick the run to take the content from and the run to take the style from")
        sources = {"content_run": runs.open(request.content_run).path, "style_run": runs.open(request.style_run).path}
        title = f"generate {request.content_run}'s content in {request.style_run}'s style"
    else:
        if not request.run:
            raise UnZipLoRAError("pick a run first (the Run list at the top)")
        sources = {"run": runs.open(request.run).path}
        title = f"generate {mode.value} with {request.run}"

    def work(job: Job) -> list[Path]:
        def on_step(done: int, total: int) -> None:
            if job.cancel_requested:  # generate keeps the seeds finished before and says so
                raise KeyboardInterrupt(f"cancelled at denoising step {done} of {total}")
            job.report(Progress(done, total))

        return generate(request.prompt, None, mode, num_images=num_images, seeds=seeds, steps=request.steps,
                        guidance_scale=request.guidance, on_step=on_step, **sources)

    return worker.submit("generate", title, work)


def export_files(runs: RunsFolder, name: str, fmt: str) -> list[Path]:
    """The run's two LoRAs in `fmt` (export.export_run, into RUN/export/FMT) and its model card."""
    from ...export import export_run

    run = runs.open(name)
    folder = run.path / "export" / fmt
    files = [folder / f"{run.path.name}_{branch}.safetensors" for branch in ("content", "style")]
    if not all(f.is_file() for f in files):  # written once per format, then served again
        files = export_run(run.path, fmt, folder, force=True)
    card = run.path / "README.md"
    return files + ([card] if card.is_file() else [])
