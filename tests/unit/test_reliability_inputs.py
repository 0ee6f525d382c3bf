"""No input expands without bound: image aspect and bit depth, the size of parsed YAML, error text."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from unziplora.config import load_config
from unziplora.core.data import load_image
from unziplora.errors import UnZipLoRAError


def test_a_long_thin_image_is_refused_before_it_is_decoded(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (8, 20_000), "red").save(strip)
    with pytest.raises(UnZipLoRAError, match="more than 16 times as long"):
        load_image(strip)
    with pytest.raises(UnZipLoRAError, match="more than 16 times as long"):
        load_image(Image.new("RGB", (20_000, 8)))
    assert load_image(Image.new("RGB", (160, 10))).size == (160, 10)  # a wide panorama is fine


def test_a_16_bit_image_is_converted_without_a_float_copy(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray((np.arange(3000 * 3000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3000, 3000)).save(path)
    tracemalloc.start()
    try:
        image = load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (3000, 3000)
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB of arrays for a 9-megapixel image"


def test_a_yaml_alias_bomb_is_one_short_line(tmp_path):
    """Six levels of ten aliases: under 400 bytes that stand for a million values (main built an
    error line of megabytes from them; nine levels exhausted memory)."""
    levels = ["&a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcde", "bcdef"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("train: {steps: [" + ", ".join(levels) + "]}\n")
    assert bomb.stat().st_size < 500
    with pytest.raises(UnZipLoRAError) as caught:
        load_config(bomb)
    assert len(str(caught.value)) < 300 and "expands to more than" in str(caught.value)


def test_a_huge_value_is_shown_shortened_in_its_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {steps: [" + ", ".join(["123456789"] * 2000) + "]}\n")
    with pytest.raises(UnZipLoRAError, match="train.steps must be an integer") as caught:
        load_config(config)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("key, value, reason", [
    ("train.steps", 10**18, "days of a GPU"),
    ("sample.steps", 10**18, "1000 timesteps"),
    ("sample.seeds", list(range(5000)), "at most 1000 per call"),
])
def test_step_and_seed_counts_are_bounded_with_the_reason(key, value, reason):
    from unziplora.config import RunConfig

    with pytest.raises(UnZipLoRAError, match=reason):
        RunConfig().with_overrides({key: value})


def test_the_page_refuses_a_huge_step_count_before_queueing(tiny_image, tmp_path):
    from unziplora.app.ui.runs import RunsFolder
    from unziplora.app.ui.tasks import DecomposeRequest, submit_decompose

    class NoWorker:
        def submit(self, *args, **kwargs):
            raise AssertionError("queued")

    upload = tmp_path / "in.png"
    tiny_image.save(upload)
    runs = RunsFolder(tmp_path / "runs")
    with pytest.raises(UnZipLoRAError, match="at most 100,000"):
        submit_decompose(NoWorker(), runs, "embedded", upload, "big", DecomposeRequest("cat", "sketch", steps=10**18),
                         2**20)
    assert not runs.pending("big").exists() and not (runs.root / "big").exists()
