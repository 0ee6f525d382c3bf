"""Resumable training checkpoints: everything the next step depends on, written atomically.

    OUT.partial/checkpoint/
      tensors-000004.safetensors   both branches (raw masks), mergers, AdamW moments and step
                                   counts per parameter, torch/numpy RNG states, the trainer's
                                   CPU generator
      state.json                   the commit record: step, refresh_pending, loss history,
                                   non-tensor optimiser and grad-scaler state, python RNG state,
                                   the run's fingerprint and the name of its tensors file

The tensors file is written first under a per-step name (temp file + rename), then state.json
is replaced in one rename: a kill at any moment leaves the previous complete checkpoint
readable. Safetensors and JSON only, never pickle. The latent cache (data.CroppedLatents) is a
pure function of the crop, so it is rebuilt on resume rather than saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..core.callbacks import Callback
from ..config import RunConfig
from ..errors import UnZipLoRAError
from ..core.layer import BRANCHES
from .folder import load_safetensors, save_safetensors, write_text_atomic

CHECKPOINT_DIR = "checkpoint"
RECORD_FILE = "state.json"
# 2: one parameter per kind for both branches (lora.layer), so AdamW state is indexed differently.
CHECKPOINT_FORMAT = 3  # 3: the mergers are one AdamW parameter (MergerPool), not one per layer
# state.json names its tensors file; anything else (a path, "../x") is refused, not opened.
_TENSORS_NAME = re.compile(r"tensors-\d{6,}\.safetensors")
# Keys that change only what is written around training, not the trained numbers.
_NEUTRAL_KEYS = {"train": ("preview_every", "no_preview", "checkpoint_every"), "sample": None}


# ----- what a checkpoint must match -------------------------------------------------------------
def fingerprint(config: RunConfig, image_sha256: str, base) -> dict[str, str]:
    """SHA-256 of the config (minus output-only keys), of the image and of the base model (its
    `BaseModel.fingerprint`)."""
    cfg = config.to_dict()
    for section, keys in _NEUTRAL_KEYS.items():
        for key in keys or list(cfg[section]):
            cfg[section].pop(key, None)
    return {
        "config": _sha256(json.dumps(cfg, sort_keys=True).encode()),
        "image": image_sha256,
        "base model": base.fingerprint(),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----- saving -----------------------------------------------------------------------------------
def save_checkpoint(trainer, folder: Path, run_fingerprint: dict[str, str], elapsed_s: float | None = None) -> None:
    """Write the trainer's full state to `folder` (see the module docstring for the layout);
    `elapsed_s`: the run's time so far, every process that worked on it included."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"lora.{k}": v for k, v in trainer.lora.state_dict(raw=True).items()}
    tensors.update(_rng_tensors(trainer.generator))
    optim_tensors, optim_scalars = _split_optimizer_state(trainer.optimizer)
    tensors.update(optim_tensors)
    name = f"tensors-{trainer.step:06d}.safetensors"
    save_safetensors(tensors, folder / name)
    record = {
        "format": CHECKPOINT_FORMAT,
        "step": trainer.step,
        "refresh_pending": trainer.refresh_pending,
        "history": [dataclasses.asdict(log) for log in trainer.history],
        "optimizer": optim_scalars,
        "scaler": trainer.scaler.state_dict(),
        "rng": {"python": _python_rng_to_json(), "numpy": _numpy_rng_scalars()},
        "fingerprint": run_fingerprint,
        "tensors": name,
        **({"elapsed_s": round(elapsed_s, 3)} if elapsed_s is not None else {}),
    }
    write_text_atomic(folder / RECORD_FILE, json.dumps(record))  # the commit point
    for old in folder.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _split_optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW per-parameter state: tensors (exp_avg, exp_avg_sq, step) to safetensors, the rest to JSON."""
    tensors, scalars = {}, {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, scalars


def _rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.generator": generator.get_state(),
               "rng.numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def _python_rng_to_json() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_scalars() -> list:
    kind, _, pos, has_gauss, cached = np.random.get_state()
    return [kind, int(pos), int(has_gauss), float(cached)]


# ----- reading and restoring --------------------------------------------------------------------
def read_record(folder: Path) -> dict | None:
    """The committed record of `folder`, None when there is none; a damaged one is an error."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    ok = isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("format"), int)
    if not ok:
        raise UnZipLoRAError(f"{path} is damaged; start over with --force")
    if record["format"] > CHECKPOINT_FORMAT:
        raise UnZipLoRAError(f"{path} was written by a newer unziplora; upgrade unziplora or start over with --force")
    if record["format"] < CHECKPOINT_FORMAT:
        raise UnZipLoRAError(f"{path} was written by an older unziplora, whose optimiser state this one cannot "
                             "read; start over with --force")
    if not isinstance(record.get("tensors"), str) or not _TENSORS_NAME.fullmatch(record["tensors"]):
        raise UnZipLoRAError(f"{path} names an invalid tensors file {record.get('tensors')!r}; start over with --force")
    problem = _record_problem(record)
    if problem:
        raise UnZipLoRAError(f"{path} is damaged: {problem}; start over with --force")
    return record


_LOG_FIELDS = {"step": int, "loss": float, "mse": float, "orth": float, "refresh": bool}


def _is(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _record_problem(record: dict) -> str | None:
    """What is wrong with a commit record's fields (None: nothing), named for the error line."""
    step = record["step"]
    if step < 0:
        return f"'step' is {step}"
    if not isinstance(record.get("refresh_pending"), bool):
        return "'refresh_pending' must be true or false"
    history = record.get("history")
    if not isinstance(history, list) or len(history) != step:
        return f"'history' must list one entry per step ({step})"
    for log in history:
        if not isinstance(log, dict) or set(log) != set(_LOG_FIELDS) or not all(
                _is(log[k], kind) for k, kind in _LOG_FIELDS.items()):
            return f"'history' holds {str(log)[:60]!r}, not a step log ({', '.join(_LOG_FIELDS)})"
    optimizer = record.get("optimizer")
    if not isinstance(optimizer, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, dict) for k, v in optimizer.items()):
        return "'optimizer' must map parameter indices to their settings"
    if not isinstance(record.get("scaler"), dict):
        return "'scaler' must be a mapping"
    if not isinstance(record.get("fingerprint"), dict):
        return "'fingerprint' must be a mapping"
    rng = record.get("rng")
    if not isinstance(rng, dict):
        return "'rng' must hold the python and numpy random states"
    python, numpy = rng.get("python"), rng.get("numpy")
    ok = (isinstance(python, list) and len(python) == 3 and _is(python[0], int) and isinstance(python[1], list)
          and len(python[1]) == 625 and all(_is(x, int) and 0 <= x < 2**32 for x in python[1])
          and (python[2] is None or _is(python[2], float)))
    if not ok:
        return "'rng.python' is not a Python random state"
    ok = (isinstance(numpy, list) and len(numpy) == 4 and numpy[0] == "MT19937" and _is(numpy[1], int)
          and 0 <= numpy[1] <= 624 and _is(numpy[2], int) and _is(numpy[3], float))
    if not ok:
        return "'rng.numpy' is not a numpy random state"
    return None


def check_resumable(folder: Path, run_fingerprint: dict[str, str]) -> dict:
    """The record to resume from, or a one-line refusal naming what differs."""
    record = read_record(folder)
    if record is None:
        raise UnZipLoRAError(
            f"nothing to resume: {folder.parent} holds no checkpoint (stopped before the first one); "
            "start over with --force"
        )
    saved = record.get("fingerprint") or {}
    differ = [key for key, value in run_fingerprint.items() if saved.get(key) != value]
    if differ:
        raise UnZipLoRAError(
            f"cannot resume {folder.parent}: its checkpoint was made with another {' and '.join(differ)}; "
            "pass the same image, base model and options, or --force to start over"
        )
    return record


def restore_checkpoint(trainer, folder: Path, record: dict) -> None:
    """Put a saved state back into a freshly prepared trainer (same config, model and image)."""
    from ..core.train import StepLog

    path = folder / record["tensors"]
    tensors = load_safetensors(path, check=lambda p: _check_tensors_header(trainer, p))
    lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    for branch in BRANCHES:
        trainer.lora.load_branch(lora, branch, str(folder / record["tensors"]))
    _restore_optimizer(trainer.optimizer, tensors, record.get("optimizer", {}))
    try:
        if record.get("scaler"):
            trainer.scaler.load_state_dict(record["scaler"])
        _restore_rng(trainer.generator, tensors, record["rng"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise UnZipLoRAError(f"{folder / RECORD_FILE}: its grad-scaler or random state cannot be restored "
                             f"({str(exc).splitlines()[0][:100]}); start over with --force") from None
    trainer.step = record["step"]
    trainer.refresh_pending = bool(record["refresh_pending"])
    trainer.history = [StepLog(**log) for log in record["history"]]


_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # AdamW's per-parameter tensors, shaped like it


def _check_tensors_header(trainer, path: Path) -> None:
    """Every tensor of a checkpoint against the trainer it is restored into (from the header,
    before loading): the LoRA state, one AdamW state per parameter, the RNG states."""
    from ..models.headers import read_header

    shapes, _ = read_header(path)
    expected = {f"lora.{k}": tuple(v.shape) for k, v in trainer.lora.state_dict(raw=True).items()}
    expected.update({k: tuple(v.shape) for k, v in _rng_tensors(trainer.generator).items()
                     if not k.startswith("rng.cuda.")})
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    for key, shape in shapes.items():
        if key.startswith("optim."):
            _, index, name = (key.split(".", 2) + ["", ""])[:3]
            if not index.isdigit() or int(index) >= len(params):
                raise UnZipLoRAError(f"{path}: {key} belongs to no parameter of this model; start over with --force")
            param = tuple(params[int(index)].shape)
            want = param if name in _MOMENTS else (() if name == "step" else None)
            if want is not None and shape != want and not (name == "step" and shape == (1,)):
                raise UnZipLoRAError(f"{path}: the optimiser state {key} has shape {list(shape)}, its parameter "
                                     f"needs {list(want)}; start over with --force")
            if want is None and math.prod(shape) > 2 * math.prod(param):
                raise UnZipLoRAError(f"{path}: {key} is larger than its parameter; start over with --force")
        elif key.startswith("rng.cuda."):
            if math.prod(shape) > 1 << 16:
                raise UnZipLoRAError(f"{path}: {key} is no CUDA random state; start over with --force")
        elif key not in expected:
            raise UnZipLoRAError(f"{path}: {key} is not in this model's state; start over with --force")
        elif shape != expected[key]:
            raise UnZipLoRAError(f"{path}: {key} has shape {list(shape)}, not {list(expected[key])}; start over "
                                 "with --force")
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise UnZipLoRAError(f"{path} lacks {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; "
                             "start over with --force")


def _restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in scalars.items():
        state.setdefault(int(index), {}).update(values)
    full = optimizer.state_dict()
    n_params = sum(len(g["params"]) for g in full["param_groups"])
    adam = isinstance(optimizer, torch.optim.AdamW)
    for index, values in state.items():
        incomplete = adam and not {"step", "exp_avg", "exp_avg_sq"} <= set(values)
        if index >= n_params or incomplete:
            raise UnZipLoRAError(f"the checkpoint's optimiser state for parameter {index} does not fit this model "
                                 f"({', '.join(sorted(values))}); start over with --force")
    full["state"] = state
    try:
        optimizer.load_state_dict(full)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UnZipLoRAError(f"the checkpoint's optimiser state cannot be restored ({str(exc)[:100]}); "
                             "start over with --force") from None


def _restore_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor], saved: dict) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----- the training callback --------------------------------------------------------------------
class Checkpointer(Callback):
    """Saves every `every` steps (0: never) and when training is interrupted between steps."""

    def __init__(self, folder: Path, every: int, run_fingerprint: dict[str, str]):
        self.folder, self.every, self.fingerprint = folder, every, run_fingerprint
        self.saved_step: int | None = None
        # The run's time before this process (set from the record on resume), so a resumed run's
        # total time counts every process that worked on it.
        self.earlier_s, self.started = 0.0, time.perf_counter()

    def elapsed_s(self) -> float:
        return self.earlier_s + time.perf_counter() - self.started

    def on_step(self, trainer, log) -> None:
        done = trainer.step
        if self.every and done % self.every == 0 and done < trainer.total_steps:
            self.save(trainer)

    def on_interrupt(self, trainer) -> None:
        self.save(trainer)

    def save(self, trainer) -> None:
        save_checkpoint(trainer, self.folder, self.fingerprint, self.elapsed_s())
        self.saved_step = trainer.step

    def where(self) -> str:
        """Where the last good state is, for error lines."""
        if self.saved_step is None:
            return "no checkpoint was saved"
        return f"the checkpoint of step {self.saved_step} is kept in {self.folder.parent}"
