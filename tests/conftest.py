"""Shared fixtures: a tiny SDXL-shaped pipeline saved to disk and loaded like a real one."""

import os
import signal
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from unziplora.config import RunConfig
from unziplora.names import Branch
from tests.pipelines import save_tiny_sdxl_pipeline

# A shell starts background jobs with SIGINT ignored, and child processes inherit that. The tests that
# press Ctrl-C on a child test what happens in a terminal, so the suite puts Python's handler back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP model folder (what --clip takes)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from tests.pipelines import build_clip_tokenizer

    root = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(["a", "cat", "in", "style", "sketch"])
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(tokenizer), max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(root)
    return root


@pytest.fixture()
def small_selection(monkeypatch):
    """The reference's four seeds, with fewer and shorter generations to score them."""
    from unziplora.methods import inspiration_seeds as seeds

    monkeypatch.setattr(seeds, "SELECTION", seeds.Selection(gen_seeds=(4321, 95), images_per_seed=2, steps=2))


@pytest.fixture
def upload(tiny_image, tmp_path):
    """The tiny image as a file a user uploads to the page."""
    path = tmp_path / "upload" / "photo.png"
    path.parent.mkdir()
    tiny_image.save(path)
    return path


def interrupt_and_resume(base_source: str, image, tmp_path) -> Path:
    """Decompose on `base_source` through the CLI, Ctrl-C after step 3 (exit 130, a checkpoint kept),
    then `--resume` to the end; returns the finished run folder."""
    import unziplora.core.train as train
    from unziplora.app.cli import main

    image.save(tmp_path / "in.png")
    argv = ["decompose", str(tmp_path / "in.png"), "--out", str(tmp_path / "run"), "--base-model", base_source,
            "--subject", "cat", "--style", "sketch", "--steps", "4", "--resolution", "64", "--rank", "4",
            "--checkpoint-every", "2", "--sample-steps", "2", "--quiet"]
    real = train.Trainer.train_step

    def stop_after_three(self):
        log = real(self)
        if self.step == 3:
            raise KeyboardInterrupt
        return log

    train.Trainer.train_step = stop_after_three
    try:
        assert main(argv) == 130
    finally:
        train.Trainer.train_step = real
    assert (tmp_path / "run.partial" / "checkpoint").is_dir()
    assert main(argv + ["--resume"]) == 0
    return tmp_path / "run"


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


def adapters_and_merged(pipe, run, merged):
    """(what a run's content and style LoRAs draw as two adapters of a stock pipeline, what the merged
    LoRA file `merged` draws alone there): a merge is right when both are the same picture."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="A monadikos cat in sketch style", num_inference_steps=2, height=32, width=32,
                  output_type="np")
    pipe.load_lora_weights(str(run.lora_dir(Branch.CONTENT)), adapter_name="content")
    pipe.load_lora_weights(str(run.lora_dir(Branch.STYLE)), adapter_name="style")
    pipe.set_adapters(["content", "style"], [1.0, 1.0])
    both = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.delete_adapters(["content", "style"])
    pipe.load_lora_weights(str(merged), adapter_name="merged")
    return both, pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
