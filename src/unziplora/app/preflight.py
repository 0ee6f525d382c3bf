"""The checks of a command's arguments and paths that need no torch: run before any heavy import,
so a missing file, an existing output or a bad value is answered in well under a second.

Each check is the one the command itself makes later (the same function, the same message); this
module only calls them early. Anything that needs the model or torch stays with the command.
"""

from __future__ import annotations

from pathlib import Path

from ..config import SampleConfig
from ..core.image_file import check_image_file
from ..models.base import BaseModel
from ..models.loading import check_native_size, check_resolution_multiple
from ..run.manifest import check_run_folder, check_source
from ..run.outputs import refuse_existing


def preflight(args, overrides: dict | None = None) -> None:
    """Raise the UnZipLoRAError the command would raise for its arguments, before torch loads.
    `overrides`: decompose's config keys from its flags."""
    check = _CHECKS.get(args.command)
    if check is not None:
        check(args, overrides or {})


def _decompose(args, overrides: dict) -> None:
    from ..run.settings import layered_config

    check_image_file(args.image)
    refuse_existing(Path(args.out), args.force)
    resolved = layered_config(overrides, args.config)  # every value, the config file, the base model
    resolved.config.prompts.require_words()
    for what, size in (("train.resolution (--resolution)", resolved.config.train.resolution),
                       ("sample.resolution", resolved.config.sample.resolution)):
        check_resolution_multiple(size, resolved.base, what)
        check_native_size(size, resolved.base, args.allow_large_resolution, what)


def _generate(args, _) -> None:
    for path in (args.run, args.content, args.style):
        if path:
            check_source(path)
    settings = {"steps": args.steps, "guidance_scale": args.guidance, "seeds": args.seeds,
                "resolution": args.resolution, "guidance_rescale": args.guidance_rescale}
    SampleConfig(**{k: v for k, v in settings.items() if v is not None})  # each value checked
    if args.base_model is not None:
        BaseModel.resolve(args.base_model, args.revision)
    if args.out:
        refuse_existing(Path(args.out), args.force)


def _run_folder(args, _) -> None:
    check_run_folder(args.run)
    if args.command == "export":
        refuse_existing(Path(args.out) if args.out else Path(args.run) / "export" / args.format, args.force)


def _merge(args, _) -> None:
    check_source(args.content)
    check_source(args.style)
    if args.base_model is not None:
        BaseModel.resolve(args.base_model, args.revision)
    refuse_existing(Path(args.out), args.force)


def _probe(args, _) -> None:
    for image in args.images or ():
        check_image_file(image)
    if args.base_model is not None:
        BaseModel.resolve(args.base_model, args.revision)


def _eval(args, _) -> None:
    for image in args.reference:
        check_image_file(image)


def _ui(args, _) -> None:
    if args.base_model is not None:
        BaseModel.resolve(args.base_model)


_CHECKS = {"decompose": _decompose, "generate": _generate, "info": _run_folder, "export": _run_folder,
           "merge": _merge, "probe": _probe, "eval": _eval, "ui": _ui}
