"""Run configuration: plain dataclasses with the paper's defaults, YAML in and out.

Defaults follow the authors' training script (arXiv 2412.04465, Sec. 4 and their public code;
docs/method.md §6). Unknown keys and bad values are rejected with one line naming the key.

Every setting a user may give on the command line is declared once, here, beside its default:
`option(default, help, flag=...)` (PEFT's `field(default=..., metadata={"help": ...})`). The
command line's flags, the batch file's columns and the web form's labels are built from these
declarations (`user_options`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UnZipLoRAError

# Limits that keep a typo from queueing days of work (with the reason in each message).
MAX_TRAIN_STEPS = 100_000
MAX_SAMPLE_STEPS = 1000
MAX_SEEDS = 1000

DEFAULT_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# SDXL's attention projections are 320 to 1280 wide: a rank above this is no low-rank update
# (and a two-branch layer of rank r allocates 2 r (in + out) numbers per projection).
MAX_RANK = 1024


def option(default=dataclasses.MISSING, help: str = "", flag: str | None = None, label: str | None = None,
           default_factory=dataclasses.MISSING):
    """A config field declared with its help text; `flag` (without --) makes it a user option of
    `unziplora decompose`, `unziplora batch` and the web form (`label`: its form label)."""
    metadata = {"help": help, "flag": flag, "label": label}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UnZipLoRAError(message)


@dataclass
class ModelConfig:
    base_model: str = option(DEFAULT_BASE_MODEL, "hub id, local diffusers folder, or 'embedded' (the toy-world "
                             "model shipped with unziplora)", flag="base-model")
    revision: str | None = option(None, "the hub revision (branch, tag or commit) of --base-model", flag="revision")
    profile: str = option("auto", "block roles: auto (the base model's own profile, else SDXL's), sdxl, or a "
                          "profile YAML", flag="profile")
    block_separation: bool = True  # False: every module masked for both branches (ablation M2)
    quantize_base: Literal["no", "nf4", "int8"] = option(
        "no", "train on a frozen denoiser quantized by bitsandbytes, as QLoRA does (nf4: FLUX.1's transformer in "
        "~7 GB instead of ~24); needs CUDA", flag="quantize-base")


@dataclass
class LoraConfig:
    rank: int = option(64, "LoRA rank of each branch", flag="rank", label="Rank")
    init: Literal["gaussian", "zero_b"] = "gaussian"  # authors: A, B ~ N(0, (1/r)^2)
    lr: float = option(5e-5, "learning rate of the LoRA matrices", flag="lr")
    merger_lr: float = option(5e-3, "learning rate of the merger vectors", flag="merger-lr")  # 100x A, B (authors)

    def __post_init__(self):
        _check(0 < self.rank <= MAX_RANK, f"lora.rank must be a positive integer up to {MAX_RANK}, got {self.rank}")
        _check(self.lr > 0 and self.merger_lr > 0, "lora.lr and lora.merger_lr must be > 0")


@dataclass
class MaskConfig:
    enabled: bool = True  # column separation; False: both branches train all columns (ablation M1)
    refresh_every: int = option(200, "steps between column-mask refreshes", flag="refresh-every")  # 3 in 600 steps
    fraction: float = 0.10  # columns each masked branch gains per refresh, per layer
    cone_threshold: float = 1e-5  # |dW * G| above this counts as an important entry (G at the fp16 loss scale)
    orth_weight: float = option(0.5, "weight of the orthogonality loss (lambda)", flag="orth-weight")

    def __post_init__(self):
        _check(0 < self.fraction <= 1, f"masks.fraction must be in (0, 1], got {self.fraction}")
        _check(self.refresh_every > 0, f"masks.refresh_every must be > 0, got {self.refresh_every}")
        _check(self.orth_weight >= 0, "masks.orth_weight must be >= 0")
        _check(self.cone_threshold >= 0, "masks.cone_threshold must be >= 0")


@dataclass
class PromptConfig:
    subject: str = option("", "class noun of the subject, e.g. cat", flag="subject")
    style: str = option("", "short style phrase, e.g. watercolor", flag="style")
    identifier: str = option("monadikos", "rare token standing for <c>", flag="identifier")  # as the authors use
    combined: str = "A {identifier} {subject} in {style} style"
    content: str = "A {identifier} {subject}"
    style_prompt: str = "A {subject} in {style} style"
    separate: bool = True  # prompt separation; False: both branches see the combined prompt

    def __post_init__(self):
        for key in ("subject", "style", "identifier"):
            value = getattr(self, key)
            _check(isinstance(value, str), f"prompts.{key} must be a string")
        if self.subject or self.style:
            _check(bool(self.subject.strip()), "the subject word is empty: pass --subject, e.g. --subject cat")
            _check(bool(self.style.strip()), "the style words are empty: pass --style, e.g. --style watercolor")
        _check(bool(self.identifier.strip()), "prompts.identifier must not be empty")
        _check(len(self.identifier.split()) == 1,
               f"prompts.identifier (--identifier) must be one word, got {short_repr(self.identifier)}; "
               "e.g. --identifier sks")

    def require_words(self) -> None:
        """A decomposition needs both words (a config may leave them empty for a later layer to fill)."""
        _check(bool(self.subject.strip() and self.style.strip()),
               "subject and style words are required: pass --subject WORD --style WORDS")


@dataclass
class TrainConfig:
    steps: int = option(600, "training steps", flag="steps", label="Steps")
    resolution: int = option(1024, "training size in px, a multiple of 8", flag="resolution", label="Resolution (px)")
    batch_size: int = 1
    adam_betas: tuple[float, float] = option((0.9, 0.999), "AdamW's betas", flag="adam-betas")
    adam_eps: float = option(1e-8, "AdamW's epsilon", flag="adam-eps")
    weight_decay: float = option(1e-4, "AdamW's weight decay", flag="weight-decay")
    max_grad_norm: float = option(1.0, "gradient-norm clipping (0: none)", flag="max-grad-norm")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = option(
        "auto", "auto: fp16 on CUDA, fp32 on CPU; fp16 / bf16 need a GPU", flag="mixed-precision")
    gradient_checkpointing: bool = option(False, "trade speed for memory (SDXL under 9 GB of GPU memory)",
                                          flag="gradient-checkpointing")
    use_8bit_adam: bool = option(False, "8-bit AdamW (needs bitsandbytes and CUDA)", flag="use-8bit-adam")
    seed: int = option(0, "random seed", flag="seed", label="Seed")
    preview_every: int = option(0, "write previews every N steps (0: only the final grid)", flag="preview-every")
    no_preview: bool = option(False, "skip the final preview grid (content alone, style alone, together: three "
                              "generations)", flag="no-preview")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps (0: off)", flag="checkpoint-every")
    device: str = option("auto", "auto (cuda if there is one, else cpu), cpu or cuda", flag="device")
    # dreambooth-lora baseline only: class images the base model draws for prior preservation
    # (arXiv 2208.12242, Eq. 2); 0 = off.
    prior_images: int = option(0, "dreambooth-lora: class images for prior preservation (0: off)", flag="prior-images")
    prior_weight: float = 1.0
    # inspiration-tree only: the CLIP model its seed selection and token assignment score with
    # (the embedded toy-world model uses its world's oracles instead); batch --eval's CLIP too
    clip_model: str = option("", "a local CLIP model folder: inspiration-tree's seed selection (not needed on the "
                             "embedded model); with batch --eval, CLIP-I / CLIP-T", flag="clip")

    def __post_init__(self):
        _check(self.prior_images >= 0, f"train.prior_images must be >= 0 (0 = off), got {self.prior_images}")
        _check(self.prior_weight >= 0, f"train.prior_weight must be >= 0, got {self.prior_weight}")
        _check(self.steps > 0, f"train.steps must be a positive integer, got {self.steps}")
        _check(self.steps <= MAX_TRAIN_STEPS, f"train.steps (--steps) must be at most {MAX_TRAIN_STEPS:,}, got "
               f"{short_repr(self.steps)}: the paper trains 600, and {MAX_TRAIN_STEPS:,} is days of a GPU")
        _check(self.resolution >= 8 and self.resolution % 8 == 0, "train.resolution must be a multiple of 8")
        _check(self.batch_size > 0, "train.batch_size must be > 0")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0: no clipping)")
        _check(all(0 <= b < 1 for b in self.adam_betas),
               f"train.adam_betas must both lie in [0, 1), got {list(self.adam_betas)}; e.g. [0.9, 0.999]")
        _check(self.adam_eps >= 0, f"train.adam_eps must be >= 0, got {self.adam_eps}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.preview_every >= 0, "train.preview_every must be >= 0")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0 = no checkpoints)")
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")


@dataclass
class SampleConfig:
    """Generation settings (the authors' inference defaults)."""

    steps: int = option(50, "denoising steps of previews and generation", flag="sample-steps")
    guidance_scale: float = 5.0
    seeds: list[int] = field(default_factory=lambda: [0, 1000, 111, 1234])
    resolution: int | None = None  # None: the training resolution
    # CFG rescale (arXiv 2305.08891, Sec. 3.4): 0 for SDXL; models with zero-terminal-SNR schedules
    # declare ~0.7 in their unziplora_defaults.yaml to avoid over-exposed samples.
    guidance_rescale: float = 0.0

    def __post_init__(self):
        _check(self.steps > 0, f"sample.steps (--steps) must be > 0, got {self.steps}")
        _check(self.steps <= MAX_SAMPLE_STEPS, f"sample.steps (--steps) must be at most {MAX_SAMPLE_STEPS}, got "
               f"{short_repr(self.steps)}: the schedulers have {MAX_SAMPLE_STEPS} timesteps, more would repeat them")
        _check(len(self.seeds) <= MAX_SEEDS, f"sample.seeds (--seeds) holds {len(self.seeds)} seeds; at most "
               f"{MAX_SEEDS} per call (one image each: split a longer list over several calls)")
        _check(len(self.seeds) > 0, "sample.seeds must hold at least one seed")
        bad = [s for s in self.seeds if not 0 <= s < 2**63]
        _check(not bad, f"sample.seeds (--seeds) must lie in [0, 2**63), got {bad[0] if bad else ''}")
        twice = sorted({s for s in self.seeds if list(self.seeds).count(s) > 1})
        _check(not twice, f"sample.seeds (--seeds) names seed {twice[0] if twice else ''} more than once; a seed "
                          "always gives the same image: give each seed once (--num-images for more per seed)")
        _check(math.isfinite(self.guidance_scale) and self.guidance_scale >= 0,
               f"sample.guidance_scale (--guidance) must be a finite number >= 0, got {self.guidance_scale}")
        _check(self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
               f"sample.resolution (--resolution) must be a positive multiple of 8, got {self.resolution}")
        _check(0.0 <= self.guidance_rescale <= 1.0, f"sample.guidance_rescale must be in [0, 1], got {self.guidance_rescale}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """A copy with dotted keys replaced, e.g. {"train.steps": 10}; None values are ignored."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            _check(section in data and key in data[section], f"unknown config key {dotted!r}")
            data[section][key] = value
        return config_from_dict(data)


@dataclass(frozen=True)
class UserOption:
    """A setting users give by name: --FLAG on the command line, a FLAG column in a batch file."""

    key: str  # dotted config key, e.g. "train.steps"
    flag: str  # without the dashes, e.g. "steps"
    help: str
    annotation: Any
    default: Any
    label: str | None  # the web form's label, where the form shows it

    def argparse_kwargs(self) -> dict[str, Any]:
        """How argparse reads it; every default is None: a layer below sets what is not given."""
        inner = typing.get_args(self.annotation)
        origin = typing.get_origin(self.annotation)
        layered = self.key.split(".")[0] in ("train", "lora", "masks", "sample")
        shown = list(self.default) if isinstance(self.default, tuple) else self.default
        default = f"the method's or the base model's, else {shown}" if layered else shown
        help_text = f"{self.help} (default: {default})" if shown not in ("", None) else self.help
        if self.annotation is bool:
            return {"action": "store_true", "default": None, "help": self.help}
        if origin is Literal:
            return {"choices": list(inner), "help": help_text}
        if origin is tuple:
            return {"type": inner[0], "nargs": len(inner), "help": help_text}
        if origin is list:
            return {"type": inner[0], "nargs": "+", "help": help_text}
        plain = next((a for a in (inner or (self.annotation,)) if a is not type(None)), str)
        return {"type": plain, "help": help_text} if plain in (int, float) else {"help": help_text}


_HELP_ORDER = ("prompts", "model", "train", "lora", "masks", "sample")  # how --help lists them


def user_options() -> list[UserOption]:
    """Every setting declared with a flag (`option(..., flag=...)`), in declaration order."""
    found = []
    sections = sorted(dataclasses.fields(RunConfig), key=lambda f: _HELP_ORDER.index(f.name))
    for section in sections:
        cls = typing.get_type_hints(RunConfig)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag"):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                found.append(UserOption(f"{section.name}.{f.name}", f.metadata["flag"], f.metadata["help"],
                                        hints[f.name], default, f.metadata.get("label")))
    return found


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check one value against its annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        _check(value in args, f"{where} must be one of {', '.join(map(repr, args))}, got {short_repr(value)}")
        return value
    if origin in (list, tuple):
        _check(isinstance(value, (list, tuple)), f"{where} must be a list, got {short_repr(value)}")
        item_type = args[0]
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            _check(len(items) == len(args), f"{where} must have {len(args)} values")
            return tuple(items)
        return items
    if annotation is bool:
        _check(isinstance(value, bool), f"{where} must be true or false, got {short_repr(value)}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool),
               f"{where} must be an integer, got {short_repr(value)}")
        return value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
        _check(ok, f"{where} must be a finite number, got {short_repr(value)}")  # NaN, inf and huge ints fail `<=`
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), f"{where} must be a string, got {short_repr(value)}")
        return value
    raise TypeError(f"unsupported annotation {annotation} at {where}")


def _section_from_dict(cls, data: Any, where: str):
    _check(isinstance(data, dict), f"config section {where!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))  # str: YAML keys may be numbers
    if unknown:
        raise UnZipLoRAError(f"unknown config key {where}.{unknown[0]}; known keys: {', '.join(sorted(names))}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**values)


def config_from_dict(data: dict[str, Any] | None) -> RunConfig:
    data = data or {}
    _check(isinstance(data, dict), "a config file must hold a mapping of sections")
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(map(str, set(data) - set(sections)))
    if unknown:
        raise UnZipLoRAError(f"unknown config section {unknown[0]!r}; known: {', '.join(sections)}")
    hints = typing.get_type_hints(RunConfig)
    return RunConfig(**{name: _section_from_dict(hints[name], value, name) for name, value in data.items()})


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    _check(path.is_file(), f"config file {path} does not exist")
    return config_from_dict(read_yaml(path, "config file"))


# A settings file is a few dozen values: bounded by its size on disk and by what it parses into
# (YAML aliases let 600 bytes stand for billions of values).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_VALUES = 10_000


def read_yaml(path: Path, what: str) -> Any:
    """A small YAML settings file, parsed; one line if it is too large, expands too far, or is no YAML."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise UnZipLoRAError(f"{what} {path} is {path.stat().st_size:,} bytes; a settings file is at most "
                             f"{MAX_YAML_BYTES:,}: give the right file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UnZipLoRAError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise UnZipLoRAError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0][:200]}") from None
    budget = [MAX_YAML_VALUES]

    def count(value) -> None:  # counts aliased values every time they are used, stops at the budget
        budget[0] -= 1
        if budget[0] < 0:
            raise UnZipLoRAError(f"{what} {path} expands to more than {MAX_YAML_VALUES:,} values (YAML aliases?); "
                                 "a settings file holds a few dozen: write them out")
        if isinstance(value, dict):
            for key, item in value.items():
                count(key)
                count(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                count(item)

    count(data)
    return data


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() for error lines, bounded however large or deep `value` is."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict, shortener.maxstring = 3, 6, 6, limit
    shortener.maxother, shortener.maxlong = limit, 40
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
