"""The committed base model: intact (checksums) and loadable through the user's path."""

import hashlib

import pytest

from unziplora.models.base import BaseModel
from unziplora.models.embedded import EMBEDDED_MODEL
from unziplora.models.loading import CHECKSUM_FILE

pytestmark = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")


def test_checksums_match():
    lines = (EMBEDDED_MODEL / CHECKSUM_FILE).read_text().split("\n")
    entries = [line.split("  ", 1) for line in lines if line]
    assert any(name.endswith(".safetensors") for _, name in entries)
    for digest, name in entries:
        assert hashlib.sha256((EMBEDDED_MODEL / name).read_bytes()).hexdigest() == digest, name


def test_no_pickled_weights_and_small_enough():
    files = [p for p in EMBEDDED_MODEL.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    assert sum(p.stat().st_size for p in files) < 40 * 2**20


def test_loads_and_has_its_own_profile():
    from unziplora.models.profiles import resolve_profile

    pipe = BaseModel.resolve(EMBEDDED_MODEL).load()
    assert pipe.unet.config.sample_size == 16  # 64 px images, 16x16 latents
    if (EMBEDDED_MODEL / "unziplora_profile.yaml").is_file():
        assert resolve_profile("auto", BaseModel.resolve(EMBEDDED_MODEL)).name == "toyworld-sdxl"
