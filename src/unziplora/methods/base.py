"""The interface every decomposition method implements once: a `MethodPlugin`.

A plugin says, for its method: which settings it brings (its reference code's, as a layer under
the base model's and the user's; and the settings that define it, which a user may not
contradict), how it trains (a loop `core.train.fit` runs, with the callbacks every method gets),
what it writes into the run folder and records in the manifest, and how its LoRAs combine when
generating. `decompose`, `generate` and the model card ask the plugin; nothing outside a method's
module tests which method it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnZipLoRAError
from ..names import Method, Mode


class Combine(str, enum.Enum):
    """How `generate` uses two LoRAs together ("both" of one run, or "cross" of two)."""

    TWO_BRANCH = "two-branch"  # UnZipLoRA's two-branch layers: three prompts, mergers (arXiv 2412.04465)
    ONE_LORA = "one-lora"  # the one LoRA of the run, once, with the whole prompt (DreamBooth-LoRA)
    BOTH_PARTS = "both-parts"  # both LoRAs loaded as ordinary adapters under one prompt (B-LoRA)
    TOKENS = "tokens"  # learned text tokens (textual inversion) in one ordinary prompt (Inspiration Tree)


@dataclass(frozen=True)
class ReferenceSettings:
    """The training settings of a method's reference code: a settings layer under the base model's."""

    source: str
    values: dict[str, object]


@dataclass(frozen=True)
class ModelCardText:
    """What a run's README says of its files: what each LoRA holds, how "both" combines them, and
    the files beyond the two LoRAs."""

    exports: str
    together: str
    files: str = ""
    template: str | None = None  # the whole card (run/modelcard.py's fields) for a method without LoRAs


class MethodPlugin:
    """One decomposition method. Subclasses set the class attributes and implement `prepare` and
    `write_weights`; the rest has defaults that fit a method training one ordinary LoRA."""

    method: Method
    help: str = ""  # one line for --help and the web form
    reference: ReferenceSettings | None = None
    defining: dict[str, object] = {}  # dotted settings that make the method what it is
    resumable: bool = False  # keeps checkpoints: `decompose --resume` continues it
    has_preview: bool = False  # draws content / style / together previews while it trains
    card: ModelCardText = ModelCardText("", "")
    denoisers: tuple[str, ...] = ("unet",)  # the base models' denoisers it trains (FLUX.1's: "transformer")

    # ----- settings -------------------------------------------------------------------------------
    @property
    def reference_settings(self) -> dict[str, object]:
        return dict(self.reference.values) if self.reference else {}

    # ----- training -------------------------------------------------------------------------------
    def check(self, spec) -> None:
        """Refuse a run this method cannot do (one line), before the base model loads."""
        family = spec.base.family
        if family.denoiser not in self.denoisers:
            able = ", ".join(p.method.value for p in _plugins() if family.denoiser in p.denoisers)
            raise UnZipLoRAError(f"--method {self.method.value} trains UNet base models (SDXL, SD 1.x/2.x), not "
                                 f"{family.title}; on {family.title} use --method {able}")

    def prepare(self, spec, pipe, image, prompts, profile, device, dtype, workdir: Path, progress: bool = False,
                callbacks=()):
        """Build the loop on a loaded pipeline (spec: run.spec.RunSpec). The loop is what
        `core.train.fit` runs: step, total_steps, should_stop, history, timings, train_step(), and
        the optimizer, scaler, max_grad_norm and unet it trains with (recorded in the manifest).
        `progress`: show bars for long work before the training loop (class images, seed selection);
        `callbacks`: the run's own (the page's progress and stop requests), for training done there."""
        raise NotImplementedError

    def write_weights(self, loop, folder: Path) -> dict[str, str]:
        """Write the content and style LoRAs (and any state of its own) into `folder`; returns the
        manifest's `files` entries."""
        raise NotImplementedError

    def preview(self, loop) -> list | None:
        """Content alone, style alone, together (one image each) for preview.png; None: no preview."""
        return None

    def manifest_fields(self, spec, loop) -> dict:
        """What this method adds to the manifest beyond the fields every run has."""
        return {}

    def style_words(self, config) -> str:
        """What `<s>` stands for when generating with this run."""
        return config.prompts.style

    # ----- generation -----------------------------------------------------------------------------
    def combine(self, mode: Mode, style_method: Method | None) -> Combine:
        """How this run's content LoRA combines with a style LoRA (of `style_method`, None for a
        plain file) in `mode` (both or cross)."""
        return Combine.TWO_BRANCH


def _plugins():
    from . import PLUGINS  # the registry imports this module: read it when asked

    return PLUGINS.values()
