"""unziplora: split one image into a content LoRA and a style LoRA (UnZipLoRA, arXiv 2412.04465).

Each command parses its arguments and calls the Python API of the same name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..errors import UnZipLoRAError
from ..bench import BENCHES, QUALITY_ROWS
from ..names import Mode
from ..run.formats import EXPORT_FORMATS
from ..config import DEFAULT_BASE_MODEL, user_options
from ..names import MergeMethod, Method
from ..metrics import DEFAULTS, METRICS
from .preflight import preflight
from .terminal import show_details, sigterm_as_ctrl_c


def decompose_flags(parser) -> None:
    """Every option declared in config.py (`user_options`): a flag of decompose and batch each.
    Left unset, a setting takes the layered default (run/settings.py)."""
    for opt in user_options():
        parser.add_argument(f"--{opt.flag}", dest=opt.flag.replace("-", "_"), **opt.argparse_kwargs())


def _add_decompose(sub) -> None:
    p = sub.add_parser("decompose", help="train a content LoRA and a style LoRA from one image")
    p.add_argument("image", help="the input image")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--config", help="YAML config; command-line options override it")
    decompose_flags(p)
    p.add_argument("--method", default=Method.UNZIPLORA.value, choices=[m.value for m in Method],
                   help="unziplora (the default: full method, M3); ablations unziplora-m1 (prompt separation only), "
                        "unziplora-m2 (+ column separation, no block roles); baselines dreambooth-lora, b-lora (by "
                        "default with its reference settings: rank 64, lr 5e-5, 1000 steps), inspiration-tree (two "
                        "textual-inversion tokens; 1000 steps; needs --clip FOLDER except on the embedded model)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT.partial (finish it, if its outputs are complete)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing run folder (and discard an interrupted OUT.partial, never a live run's)")
    p.add_argument("--allow-large-resolution", action="store_true",
                   help="train at more than twice the base model's own size (refused by default: each step costs the "
                        "square of the ratio, e.g. 4096x at 4096 px on the 64 px embedded model)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def decompose_overrides(args) -> dict:
    """The config keys the user set on the command line (None: not given)."""
    return {opt.key: getattr(args, opt.flag.replace("-", "_")) for opt in user_options()}


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate with a run's LoRAs (content, style, both, or across runs)")
    p.add_argument("run", nargs="?", help="run folder, or a LoRA file (diffusers, kohya, B-LoRA) for content|style")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.BOTH.value,
                   help="content alone, style alone, both (the default), or cross (with --content and --style)")
    p.add_argument("--content", help="run folder or LoRA file for the content branch (cross-run)")
    p.add_argument("--style", help="run folder or LoRA file for the style branch (cross-run)")
    p.add_argument("--prompt", required=True, help='e.g. "A <c> cat in <s> style on a boat"')
    p.add_argument("--out", help="output folder (default: a new RUN/samples/MODE-NNN)")
    p.add_argument("--seeds", type=int, nargs="+", help="sampling seeds (default: the run's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the run's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--guidance-rescale", type=float, help="CFG rescale in [0, 1] (default: the run's)")
    p.add_argument("--num-images", type=int, default=1, help="images per seed (default 1)")
    p.add_argument("--resolution", type=int, help="image size in px (default: the run's training size)")
    p.add_argument("--base-model", help="override the run's base model: hub id, folder or 'embedded' (default: the "
                                        "run's, at the revision it was trained at)")
    p.add_argument("--revision", help="with --base-model: its hub revision (default: the run's)")
    p.add_argument("--identifier", help="what <c> stands for, when the content LoRA is a plain file")
    p.add_argument("--style-words", help="what <s> stands for, when the style LoRA is a plain file")
    p.add_argument("--device", default="auto", help="auto (the default), cpu or cuda")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_batch(sub) -> None:
    p = sub.add_parser("batch", help="decompose many images (a CSV, JSON lines or a folder): resumable, sharded, "
                                     "one image per process (accelerate launch -m unziplora batch ...)")
    p.add_argument("jobs", help="jobs.csv, jobs.jsonl, or a folder of images with a sidecar each (NAME.yaml: "
                                "subject, style); columns: id, image, subject, style, method, config, and any "
                                "option below by name (steps, seed, base-model, ...) or config key (train.steps)")
    p.add_argument("--out", required=True, help="folder of the runs: OUT/<row id>/, OUT/index.html")
    p.add_argument("--config", help="YAML config for every row; options and a row's columns override it "
                                    "(a row's config column replaces it)")
    decompose_flags(p)
    p.add_argument("--method", default=Method.UNZIPLORA.value, choices=[m.value for m in Method],
                   help="method of every row without a method column (default unziplora)")
    p.add_argument("--shard", help="INDEX/COUNT: run only rows INDEX, INDEX+COUNT, ... (a Slurm array task: "
                                   "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); split again among accelerate's processes")
    p.add_argument("--retry-failed", action="store_true", help="rerun the rows that failed (by default they stay failed)")
    p.add_argument("--resume", action="store_true",
                   help="accepted as in decompose; a batch always resumes interrupted rows from their checkpoint")
    p.add_argument("--force", action="store_true",
                   help="start interrupted rows over instead of resuming them (finished rows are never redone: "
                        "delete a run folder to redo its row)")
    p.add_argument("--allow-large-resolution", action="store_true",
                   help="train rows at more than twice the base model's own size (refused by default, as in decompose)")
    p.add_argument("--eval", action="store_true",
                   help="score each finished row: the toy world's oracles for toy-world images, else the paper's "
                        "metrics with --clip/--dino/--csd")
    # --clip (the CLIP folder, of --eval too) is a decompose option: decompose_flags adds it
    p.add_argument("--dino", help="--eval: DINO ViT-S/16 folder (subject alignment)")
    p.add_argument("--csd", help="--eval: CSD folder (style alignment)")
    p.add_argument("--status", action="store_true",
                   help="run nothing: print every row's status (done, running, failed, pending) and refresh OUT/index.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_ui(sub) -> None:
    p = sub.add_parser("ui", help="a local web page: upload, decompose with live progress, generate, download "
                                  "(needs: pip install 'unziplora[ui]')")
    p.add_argument("--runs", default="runs", help="the folder the page keeps its runs in (default runs/)")
    p.add_argument("--base-model", help=f"hub id, local diffusers folder or 'embedded' (the toy-world model shipped "
                                        f"with unziplora); default: {DEFAULT_BASE_MODEL}, the paper's, as decompose")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to your network, "
                        "with no login)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    p.add_argument("--max-upload-mb", type=float, default=50, help="largest image the page accepts (default 50 MB)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="unziplora",
        description="Split one image into a content LoRA (the subject) and a style LoRA (the look) for SDXL or SD 1.5 "
                    "(UnZipLoRA, arXiv 2412.04465).",
        epilog="Start with: unziplora demo   (a CPU-sized example on the embedded toy-world model). "
               "Help for a command: unziplora COMMAND --help")
    parser.add_argument("--version", action="version", version=f"unziplora {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the details behind a run's notes (e.g. cone-score ties at each mask refresh)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_decompose(sub)
    _add_batch(sub)
    _add_generate(sub)
    _add_ui(sub)
    info = sub.add_parser("info", help="describe a run folder")
    info.add_argument("run", help="a run folder (the --out of decompose, e.g. runs/cat): its base model, prompts, "
                                  "settings and where each came from, files, timings")
    merge = sub.add_parser("merge", help="merge a content LoRA and a style LoRA into one ordinary LoRA")
    merge.add_argument("content", help="run folder (its content LoRA) or a LoRA file (diffusers, kohya, B-LoRA)")
    merge.add_argument("style", help="run folder (its style LoRA) or a LoRA file")
    merge.add_argument("--method", default=MergeMethod.DIRECT.value, choices=[m.value for m in MergeMethod],
                       help="direct: exact sum of the two updates; ziplora: learned per-column mergers")
    merge.add_argument("--base-model", help="ziplora: the base model (default: the runs', at their revision)")
    merge.add_argument("--revision", help="with --base-model: its hub revision")
    merge.add_argument("--content-prompt", help="ziplora: the content LoRA's prompt (default: the run's p_c)")
    merge.add_argument("--style-prompt", help="ziplora: the style LoRA's prompt (default: the run's p_s)")
    merge.add_argument("--steps", type=int, default=100, help="ziplora optimisation steps")
    merge.add_argument("--out", required=True, help="folder for pytorch_lora_weights.safetensors")
    merge.add_argument("--force", action="store_true", help="replace an existing output folder")
    bench = sub.add_parser("bench", help="benchmarks: ratios against a baseline measured in the same run")
    bench.add_argument("which", choices=BENCHES,
                       help="base-model, quality, speed: on the embedded toy-world model; memory: the full-size SDXL UNet "
                            "(random weights) on CPU, needs ~14 GB RAM (--device cuda: on a GPU, fp16, 1024 px)")
    bench.add_argument("--json", help="write the results here (and a Markdown table beside it)")
    bench.add_argument("--base-model", help="base-model, speed, quality: the base model (default: 'embedded', the "
                                            "toy-world model: these benchmarks measure its world)")
    bench.add_argument("--images", type=int, help="quality: held-out images (default 12)")
    bench.add_argument("--methods", nargs="+", choices=QUALITY_ROWS,
                       help="quality: the methods to compare (default: all of them)")
    bench.add_argument("--per-combo", type=int, help="base-model: images per (class, family) combo (default 4)")
    bench.add_argument("--seeds", type=int, help="quality: sampling seeds per image (default 2)")
    bench.add_argument("--train-steps", type=int,
                       help="quality, speed: training steps of each whole decomposition (default 600)")
    bench.add_argument("--workdir", help="quality: where its runs go (default runs/bench)")
    bench.add_argument("--resume", action="store_true",
                       help="quality: reuse the runs and scores an earlier invocation finished with the same settings")
    bench.add_argument("--repeats", type=int, help="speed: timed repeats (default 11); memory: steps (default 2, at most 3)")
    bench.add_argument("--steps", type=int, help="speed (default 20), quality (default 30): denoising steps per image")
    bench.add_argument("--rank", type=int, help="LoRA rank (default: speed and quality 16; memory 64, the paper's)")
    bench.add_argument("--resolutions", type=int, nargs="+",
                       help="memory: image sizes in px (default: CPU 256 512; cuda 1024)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="memory: where the SDXL UNet runs")
    bench.add_argument("--threads", type=int, help="speed, memory: torch threads (default 1)")
    bench.add_argument("--rounds", type=int,
                       help="speed: turns of whole decompositions, one per method (default 3; 0: none); memory: turns "
                            "of (ours, PEFT, PEFT default AdamW) processes for the step ratio (default 3)")
    ev = sub.add_parser("eval", help="CLIP-I/CLIP-T, DINO and CSD scores of generated images against a reference")
    ev.add_argument("generated", help="folder of generated PNG/JPEG images (e.g. RUN/samples/content)")
    ev.add_argument("--reference", required=True, nargs="+", help="reference image(s), e.g. the input")
    ev.add_argument("--prompt", help="the generation prompt, for CLIP-T")
    ev.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    ev.add_argument("--clip", default=DEFAULTS["clip"], help="CLIP model: local folder or hub id (default %(default)s)")
    ev.add_argument("--dino", default=DEFAULTS["dino"], help="DINO ViT-S/16: local folder or hub id (default %(default)s)")
    ev.add_argument("--csd", default=DEFAULTS["csd"],
                    help="CSD folder: CLIPVisionModel + csd_heads.safetensors (default %(default)s)")
    ev.add_argument("--json", help="write the scores here")
    export = sub.add_parser("export", help="write a run's LoRAs in diffusers or kohya/webui (ComfyUI, A1111) format")
    export.add_argument("run", help="the run folder whose content and style LoRAs to write (the --out of decompose, "
                                    "e.g. runs/cat)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="kohya",
                        help="kohya (the default): for ComfyUI, AUTOMATIC1111, kohya; diffusers: plain diffusers files")
    export.add_argument("--out", help="output folder (default RUN/export/FORMAT)")
    export.add_argument("--force", action="store_true", help="replace an existing output folder")
    demo = sub.add_parser("demo", help="decompose a held-out toy-world image with the embedded base model (CPU)")
    demo.add_argument("--out", default="runs/demo",
                      help="run folder (default runs/demo; if it exists, the next free runs/demo-N)")
    demo.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    demo.add_argument("--force", action="store_true", help="replace --out instead of writing beside it")
    probe = sub.add_parser("probe", help="measure a base model's block roles (B-LoRA's probe) and write its profile")
    probe.add_argument("--base-model", help=f"hub id, folder or 'embedded' (default: 'embedded' when it probes with "
                                            f"the toy world's images, else {DEFAULT_BASE_MODEL})")
    probe.add_argument("--revision", help="the hub revision of --base-model")
    probe.add_argument("--out", required=True, help="folder for unziplora_profile.yaml and block_roles.md")
    probe.add_argument("--images", nargs="+", help="images to probe with (default: 4 held-out toy-world images)")
    probe.add_argument("--dino", help="DINO ViT-S/16 folder: scores the subject (needed with --images)")
    probe.add_argument("--csd", help="CSD folder: scores the style (or give --clip)")
    probe.add_argument("--clip", help="CLIP folder: scores the style with CLIP-I when no --csd is given")
    probe.add_argument("--steps", type=int, default=300, help="LoRA steps per image (default 300)")
    probe.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    probe.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3)")
    probe.add_argument("--resolution", type=int, help="training and sampling size (default: 64 on the toy world, else 1024)")
    return parser


def run_probe(args) -> None:
    from ..core.data import load_image
    from ..models.base import DEFAULT_BASE_MODEL, EMBEDDED_NAME, BaseModel
    from ..probe import metric_scorer, probe_block_roles

    scorer = None
    if args.dino or args.csd or args.clip:
        from ..metrics import models

        if not args.dino or not (args.csd or args.clip):
            raise UnZipLoRAError("scoring with metrics needs --dino FOLDER and one of --csd FOLDER or --clip FOLDER")
        style = models.CsdEncoder(args.csd) if args.csd else models.ClipEncoder(args.clip)
        scorer = metric_scorer(models.DinoEncoder(args.dino), style)
    images = [load_image(p) for p in args.images] if args.images else None
    # the toy world's images are judged by its oracles, which only its model draws for
    base = BaseModel.resolve(args.base_model or (DEFAULT_BASE_MODEL if images else EMBEDDED_NAME), args.revision)
    _, table = probe_block_roles(base, args.out, images, scorer, steps=args.steps,
                                 rank=args.rank, lr=args.lr, resolution=args.resolution)
    print(table)


def run_decompose(args) -> None:
    from ..decompose import decompose
    from ..methods import resolve_config

    resolved = resolve_config(decompose_overrides(args), args.config, args.method)
    run = decompose(args.image, args.out, resolved.config, method=args.method, force=args.force,
                    progress=not args.quiet, resume=args.resume, sources=resolved.sources,
                    allow_large_resolution=args.allow_large_resolution)
    print(run.summary())


def run_batch(args) -> int:
    """Exit status 1 when a row failed (of the launch, for its main process), else 0."""
    from .batch import BatchOptions, Evaluation, Status, batch_status, parse_shard
    from .batch import run_batch as batch
    from .batch.summary import summary_table

    aliases = {opt.flag: opt.key for opt in user_options()}
    if args.status:
        statuses = batch_status(args.jobs, args.out, aliases)
        print(summary_table(statuses))
        return int(any(s.status is Status.FAILED for s in statuses))
    models = {"clip": args.clip, "dino": args.dino, "csd": args.csd}
    if (args.dino or args.csd) and not args.eval:
        raise UnZipLoRAError("--dino and --csd choose the metrics of --eval; add --eval")
    options = BatchOptions(overrides=decompose_overrides(args), config_file=args.config, method=args.method,
                           retry_failed=args.retry_failed, force=args.force, progress=not args.quiet,
                           allow_large_resolution=args.allow_large_resolution,
                           evaluation=Evaluation(models) if args.eval else None)
    result = batch(args.jobs, args.out, options, parse_shard(args.shard) if args.shard else None, aliases)
    return int(result.failed)


def run_generate(args) -> None:
    from ..generate import generate

    paths = generate(
        args.prompt, args.out, args.mode, run=args.run, content_run=args.content, style_run=args.style,
        num_images=args.num_images, base_model=args.base_model, device=args.device, force=args.force,
        identifier=args.identifier, style_words=args.style_words, progress=not args.quiet, steps=args.steps,
        guidance_scale=args.guidance, seeds=args.seeds, resolution=args.resolution,
        guidance_rescale=args.guidance_rescale, revision=args.revision,
    )
    print(f"wrote {len(paths)} image(s) and grid.png to {paths[0].parent if paths else args.out}")


def run_ui(args) -> None:
    from .ui.app import serve

    serve(args.runs, args.base_model, args.host, args.port, args.share, args.max_upload_mb)
    # Ctrl-C has stopped the server and the worker: leave now. Tearing down gradio's and torch's
    # modules at exit takes seconds more, and the page is to stop within a few.
    print("unziplora ui: stopped", flush=True)
    sys.stderr.flush()
    os._exit(0)


def run_eval(args) -> None:
    from ..metrics.evaluate import evaluate_folder

    chosen = [m.strip() for m in args.metrics.split(",") if m.strip()]
    scores = evaluate_folder(args.generated, args.reference, args.prompt, chosen,
                             {"clip": args.clip, "dino": args.dino, "csd": args.csd}, args.json)
    for name, value in scores.items():
        print(f"{name:12s} {value:.4f}")


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            if args.verbose:
                stack.enter_context(show_details())
            stack.enter_context(sigterm_as_ctrl_c())
            status = _run(args, stack)
            sys.stdout.flush()  # here, where a closed pipe can still be handled
            return status
    except BrokenPipeError:  # `unziplora info RUN | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _run(args, stack) -> int:
    try:
        # arguments and paths first: a mistake is answered before torch and diffusers load (seconds)
        preflight(args, decompose_overrides(args) if args.command == "decompose" else None)
        if not args.debug:
            from ..models.loading import quiet_libraries

            stack.enter_context(quiet_libraries())  # library logs would bury our one-line errors
        if args.command == "decompose":
            run_decompose(args)
        elif args.command == "batch":
            return run_batch(args)
        elif args.command == "generate":
            run_generate(args)
        elif args.command == "merge":
            from ..methods.merge import merge

            out = merge(args.content, args.style, args.out, method=args.method, force=args.force,
                        base_model=args.base_model, prompts=(args.content_prompt, args.style_prompt),
                        steps=args.steps, revision=args.revision, progress=True)
            print(f"wrote {out / 'pytorch_lora_weights.safetensors'} ({args.method} merge; load it with "
                  "pipe.load_lora_weights)")
        elif args.command == "bench":
            from ..bench import run_bench

            run_bench(args.which, args.json, args.base_model, args.device, images=args.images, seeds=args.seeds,
                      train_steps=args.train_steps, workdir=args.workdir, resume=args.resume or None,
                      repeats=args.repeats, steps=args.steps, rank=args.rank, resolutions=args.resolutions,
                      threads=args.threads, rounds=args.rounds, per_combo=args.per_combo,
                      methods=tuple(args.methods) if args.methods else None)
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "export":
            from ..export import export_run

            for path in export_run(args.run, args.format, args.out, force=args.force):
                print(path)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args.out, args.steps, args.force)
        elif args.command == "probe":
            run_probe(args)
        elif args.command == "ui":
            run_ui(args)
        elif args.command == "info":
            from ..run.folder import RunFolder

            print(RunFolder.open(args.run).summary())
        return 0
    except UnZipLoRAError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # TrainingInterrupted says where its checkpoint is
        print(str(exc) or "interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
