"""Where a branch comes from at generation time: a run folder, or a plain LoRA file.

Plain LoRAs (diffusers, kohya/webui, or B-LoRA checkpoints with their doubled `unet.unet.`
prefix) become a branch with merger 1 and every column on; modules the file lacks get a zero
update. Two branches of different rank share one two-branch layer by zero-padding the smaller
rank, which leaves B A unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..names import Branch
from ..errors import UnZipLoRAError
from .loras import load_lora_any, lora_file, lora_kind
from ..models.headers import BaseShapes, check_lora_header
from ..core.inject import TwoBranchLoRA
from ..names import Method
from .folder import MANIFEST_FILE, RunFolder, load_safetensors
from .manifest import check_source
from .numbers import check_weights


TOKENS_DIR = "{}_tokens"  # a run's learned text token of one branch, one file per text encoder (Inspiration Tree)


def token_files(run_path: str | Path, branch: Branch) -> dict[str, Path]:
    """The branch's textual-inversion files of a token run ({"text_encoder": path, ...}); {} for a LoRA run."""
    folder = Path(run_path) / TOKENS_DIR.format(branch.value)
    return {p.stem: p for p in sorted(folder.glob("text_encoder*.safetensors"))} if folder.is_dir() else {}


@dataclass
class BranchSource:
    path: Path
    branch: Branch
    run: RunFolder | None = None  # gives the manifest (prompts, base model), and the state if plain is None
    plain: dict[str, torch.Tensor] | None = None  # PEFT keys without 'unet.' / 'transformer.'
    base: BaseShapes | None = None  # the shapes its files were checked against
    tokens: dict[str, Path] | None = None  # a token run's textual-inversion files per text encoder (no LoRA)
    denoiser: str = "unet"  # the part `plain` updates: "unet" (SDXL, SD) or "transformer" (FLUX.1)

    @classmethod
    def plain_lora(cls, path: str | Path, branch: Branch, base: BaseShapes | None = None,
                   run: RunFolder | None = None) -> "BranchSource":
        """An ordinary LoRA (a file, or the branch LoRA of `run`) read in any format, its header
        checked against `base` first (a LoRA of another family or shape is one error line)."""
        file = run.lora_dir(branch) if run is not None else path
        kind = lora_kind(file) or (base.denoiser if base is not None else "unet")
        return cls(Path(path), branch, run=run, plain=load_lora_any(file, base), base=base, denoiser=kind)

    @classmethod
    def open(cls, path: str | Path, branch: Branch, base: BaseShapes | None = None) -> "BranchSource":
        """A run folder or a LoRA file, every weight file it will load checked from its header against
        `base` (the base model's shapes, headers.py) first: nothing too large or of another model loads."""
        path = Path(path)
        if (path / MANIFEST_FILE).is_file():
            run = RunFolder.open(path)
            tokens = token_files(path, branch)
            if tokens:  # learned text tokens, no LoRA (Inspiration Tree)
                return cls(path, branch, run=run, base=base, tokens=tokens)
            if run.state_path.is_file():
                check_lora_header(lora_file(run.lora_dir(branch)), base)  # what --mode content|style loads
                run.check_state(base)
                return cls(path, branch, run=run, base=base)
            # a baseline's run folder (no two-branch state): its branch LoRA as a plain LoRA
            return cls.plain_lora(path, branch, base, run)
        check_source(path)
        return cls.plain_lora(path, branch, base)

    @staticmethod
    def run_of(path: str | Path) -> RunFolder | None:
        """The run folder at `path`, None for a plain LoRA file."""
        path = Path(path)
        return RunFolder.open(path) if (path / MANIFEST_FILE).is_file() else None

    # ----- facts about the source ------------------------------------------------------------
    @property
    def rank(self) -> int:
        if self.plain is None:
            return self.run.rank
        return max(v.shape[0] for k, v in self.plain.items() if k.endswith(".lora_A.weight"))

    @property
    def method(self) -> Method | None:
        """The method of the run this branch comes from (None for a plain LoRA file)."""
        return None if self.run is None else self.run.manifest.method

    def manifest_value(self, *keys: str):
        """A value from the run's manifest, or None for a plain LoRA."""
        if self.run is None:
            return None
        value = self.run.manifest
        for key in keys:
            value = getattr(value, key)
        return value

    # ----- weights ----------------------------------------------------------------------------
    def stock_lora(self) -> dict[str, torch.Tensor]:
        """What the pipeline's load_lora_weights takes for this branch alone (read by us,
        so a damaged file is our one-line error, not diffusers' traceback)."""
        if self.plain is None:
            file = lora_file(self.run.lora_dir(self.branch))
            state = load_safetensors(file, check=lambda p: check_lora_header(p, self.base))
            check_weights(state, file)
            return state
        return {f"{self.denoiser}.{k}": v for k, v in self.plain.items()}

    def branch_state(self, lora: TwoBranchLoRA) -> dict[str, torch.Tensor]:
        """This branch in TwoBranchLoRA.state_dict() form, padded to the layers' rank."""
        b = self.branch.value
        source = self.run.load_state(self.base) if self.plain is None else None
        state = {}
        for name, layer in lora.layers.items():
            if source is not None:
                a, up = source.get(f"{name}.{b}.lora_A"), source.get(f"{name}.{b}.lora_B")
                merger, mask = source.get(f"{name}.{b}.merger"), source.get(f"{name}.{b}.mask")
            else:
                a, up = self.plain.get(f"{name}.lora_A.weight"), self.plain.get(f"{name}.lora_B.weight")
                merger = mask = None
            if a is None or up is None:
                if source is not None:
                    raise UnZipLoRAError(f"{self.path} has no weights for {name}: it was made for another base model")
                a, up = torch.zeros(0, layer.in_features), torch.zeros(layer.out_features, 0)
            state[f"{name}.{b}.lora_A"], state[f"{name}.{b}.lora_B"] = _pad(a, up, lora.rank, name, self.path)
            state[f"{name}.{b}.merger"] = merger if merger is not None else torch.ones(layer.out_features)
            state[f"{name}.{b}.mask"] = mask if mask is not None else torch.ones(layer.out_features, dtype=torch.uint8)
        return state


def _pad(a: torch.Tensor, up: torch.Tensor, rank: int, name: str, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r, in) and B (out, r) to `rank`; B A is unchanged."""
    r = a.shape[0]
    if r > rank:
        raise UnZipLoRAError(f"{path}: {name} has rank {r}, more than the layer's {rank}")
    padded_a = torch.zeros(rank, a.shape[1], dtype=torch.float32)
    padded_up = torch.zeros(up.shape[0], rank, dtype=torch.float32)
    padded_a[:r], padded_up[:, :r] = a.float(), up.float()
    return padded_a, padded_up
