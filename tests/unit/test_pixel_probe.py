"""benchmarks/pixel_probe.py: one label per caption, a model that trains and samples at 32 px."""

import runpy
from pathlib import Path

import numpy as np
import torch

from unziplora.toyworld import CLASSES, FAMILIES

probe = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "pixel_probe.py"))


def test_every_caption_has_its_own_label_below_the_null_label():
    labels = {probe["label"](c, f) for c in CLASSES for f in FAMILIES}
    assert labels == set(range(probe["N_LABELS"]))


def test_the_probe_trains_within_its_budget_and_samples_images():
    torch.manual_seed(0)
    net = probe["model"]()
    before = [p.detach().clone() for p in net.parameters()]
    record = probe["train"](net, minutes=0.02, batch=2, seed=0, pool_size=8)
    assert record["steps"] >= 1 and record["samples"] == 2 * record["steps"]
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the EMA moved the weights
    images = probe["sample"](net.eval(), torch.tensor([0, 5]), steps=2, guidance=3.0, seed=0)
    assert images.shape == (2, probe["SIZE"], probe["SIZE"], 3) and images.dtype == np.uint8
