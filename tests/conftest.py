"""Shared fixtures: a tiny SDXL-shaped pipeline saved to disk and loaded like a real one."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from unziplora.config import RunConfig
from tests.pipelines import save_tiny_sdxl_pipeline

# The test models are tiny: threads buy nothing, and on a shared 2-core machine two processes
# of 2 OpenMP threads each slow down tens of times.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """Path of a tiny SDXL pipeline folder (random weights), built once per test session."""
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "base")


@pytest.fixture(scope="session")
def tiny_image():
    """A non-square RGB image with a bright square on a dark background."""
    array = np.full((40, 52, 3), 30, dtype=np.uint8)
    array[8:30, 14:38] = (230, 180, 40)
    return Image.fromarray(array)


def tiny_config(base, **overrides) -> RunConfig:
    """A run config that trains in about a second on the tiny pipeline."""
    values = {
        "prompts.subject": "cat", "prompts.style": "sketch", "model.base_model": str(base),
        "train.steps": 5, "train.resolution": 32, "lora.rank": 4, "masks.refresh_every": 2,
        "sample.steps": 2, "sample.seeds": [0, 1],
    }
    values.update(overrides)
    return RunConfig().with_overrides(values)


@pytest.fixture(scope="session")
def tiny_run(tiny_base, tiny_image, tmp_path_factory):
    """A finished decomposition on the tiny pipeline (5 steps, 3 mask refreshes)."""
    from unziplora.decompose import decompose

    return decompose(tiny_image, tmp_path_factory.mktemp("runs") / "cat", tiny_config(tiny_base), progress=False)


# A CLI run in a child process whose every training step sleeps UNZIPLORA_TEST_SLEEP seconds, so a
# test can kill it mid-run: python -c SLOW_CLI ARGS...
SLOW_CLI = """
import os, sys, time
from unziplora.core.train import Trainer
from unziplora.app.cli import main
delay, step = float(os.environ.get("UNZIPLORA_TEST_SLEEP", "0")), Trainer.train_step
def slow(self):
    log = step(self)
    time.sleep(delay)
    return log
Trainer.train_step = slow
sys.exit(main(sys.argv[1:]))
"""
