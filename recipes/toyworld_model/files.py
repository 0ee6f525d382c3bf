"""What travels with an exported base model: its recipe and the checksums of its files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from unziplora.models.loading import write_checksums

import numpy as np

RECIPE_FILE = "recipe.json"


def write_recipe(directory: Path, trainer) -> None:
    """recipe.json (how it was trained, how far) and SHA256SUMS of every weight and config file."""
    from importlib.metadata import version

    losses = [entry["loss"] for entry in trainer.log if entry["phase"] == "unet"][-200:]
    recipe = {
        "recipe": "python -m recipes.toyworld_model (recipes/toyworld_model/pretrain.py)",
        "config": trainer.saved_config or dataclasses.asdict(trainer.config),
        "trained": {"phase": trainer.phase, "unet_steps_done": trainer.step if trainer.phase == "unet" else 0,
                    "recent_unet_loss": round(float(np.mean(losses)), 5) if losses else None,
                    "schedule_changes_on_resume": trainer.schedule},
        "vae_scaling_factor": trainer.c["vae"].config.scaling_factor,
        "versions": {name: version(name) for name in ("torch", "diffusers", "transformers")},
    }
    (directory / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str))
    write_checksums(directory)


