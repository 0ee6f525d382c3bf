"""benchmarks/base_model_quality.py --family-response: how far each family word moves the UNet."""

import math
import runpy
from pathlib import Path

import pytest

from unziplora.demo import EMBEDDED_MODEL

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")
family_response = runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "base_model_quality.py"))["family_response"]


@pytest.fixture(scope="module")
def pipe():
    from unziplora.models import load_pipeline

    return load_pipeline(str(EMBEDDED_MODEL))


def test_one_row_per_sampled_step_with_every_other_family(pipe):
    from unziplora.toyworld import FAMILIES

    table = family_response(pipe, n=2, seed=0, steps=4, every=2)
    assert len(table) == 2 and list(table) == sorted(table, reverse=True)  # t = the first and third step, high noise first
    for row in table.values():
        assert set(row) == set(FAMILIES) - {"stripes"}
        assert all(math.isfinite(v) and v >= 0 for v in row.values())
    assert max(table[min(table)].values()) > 0.5  # the solid / gradient words change what this model draws


def test_words_the_encoders_cannot_tell_apart_read_zero(pipe, monkeypatch):
    encode = pipe.encode_prompt

    def one_caption_for_all(prompts, **kwargs):  # every family's prompt encoded as stripes'
        embeds, negative, pooled, negative_pooled = encode(prompts, **kwargs)
        return embeds[:1].expand_as(embeds), negative, pooled[:1].expand_as(pooled), negative_pooled

    monkeypatch.setattr(pipe, "encode_prompt", one_caption_for_all)
    table = family_response(pipe, n=2, seed=0, steps=2, every=1)
    assert all(v == pytest.approx(0.0, abs=1e-6) for row in table.values() for v in row.values())
