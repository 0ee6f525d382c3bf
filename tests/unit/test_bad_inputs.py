"""Bad input gets one UnZipLoRAError line naming the problem and the fix; odd-but-valid input loads."""

import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unziplora.models.base import BaseModel
from unziplora.app.cli import main
from unziplora.config import config_from_dict
from unziplora.core.data import MIN_IMAGE_SIDE, load_image
from unziplora.errors import UnZipLoRAError
from unziplora.models.loading import check_pipeline_folder
from unziplora.run.folder import RunFolder, load_safetensors


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge image, with no pixel data (nothing gets allocated)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write(path, data: bytes):
    path.write_bytes(data)
    return path


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))


# ----- images ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.with_name("missing.png"), "does not exist"),
        (lambda p: p.parent, "is a folder"),
        (lambda p: write(p, b""), "empty file"),
        (lambda p: write(p, b"this is not an image at all"), "not a readable image"),
        (lambda p: write(p, png_bytes(RGB)[:-40]), "not a readable image"),
        (lambda p: write(p, png_bytes(RGB, format="JPEG")[:200]), "not a readable image"),
        (lambda p: write(p, png_bytes(Image.new("RGB", (1, 1)))), f"at least {MIN_IMAGE_SIDE} px"),
        (lambda p: write(p, png_bytes(Image.new("RGB", (300, 4)))), f"at least {MIN_IMAGE_SIDE} px"),
        (lambda p: write(p, png_header_claiming(100_000, 100_000)), "too large"),
        (lambda p: write(p, png_header_claiming(9000, 9000)), "too large"),  # PIL alone only warns
    ],
    ids=["missing", "directory", "zero-bytes", "not-an-image", "truncated-png", "truncated-jpeg", "1x1",
         "300x4", "bomb-100000", "bomb-9000"],
)
def test_bad_images_are_one_clear_error(tmp_path, make, message):
    path = make(tmp_path / "img.png")
    with pytest.raises(UnZipLoRAError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return png_bytes(Image.new("RGB", (40, 20), "red"), format="JPEG", exif=exif.tobytes())


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (20, 16), color) for color in ("blue", "red")]
    return png_bytes(frames[0], format=fmt, save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize(
    "data, size, corner",
    [
        (png_bytes(Image.new("L", (20, 16), 128)), (20, 16), (128, 128, 128)),
        (png_bytes(Image.new("RGBA", (20, 16), (255, 0, 0, 0))), (20, 16), (255, 255, 255)),  # on white
        (png_bytes(Image.new("CMYK", (20, 16), (0, 0, 0, 0)), format="JPEG"), (20, 16), None),
        (png_bytes(Image.fromarray(np.full((16, 20), 65535, dtype=np.uint16))), (20, 16), (255, 255, 255)),
        (png_bytes(Image.new("RGB", (20, 16), "green").quantize(4)), (20, 16), (0, 128, 0)),
        (_exif_rotated(), (20, 40), None),  # orientation respected: portrait
        (_animated("GIF"), (20, 16), (0, 0, 255)),  # first frame
        (_animated("WEBP"), (20, 16), None),
        (png_bytes(Image.new("RGB", (300, 20))), (300, 20), None),  # non-square: cropped at training time
    ],
    ids=["grayscale", "rgba", "cmyk", "16-bit", "palette", "exif-rotated", "gif", "webp", "non-square"],
)
def test_odd_but_valid_images_load_as_rgb(tmp_path, data, size, corner):
    path = tmp_path / "img"
    path.write_bytes(data)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == size
    if corner is not None:
        assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((0, 0)), corner))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(min_size=1, max_size=300),
    st.binary(max_size=200).map(lambda tail: png_bytes(RGB)[:60] + tail),  # a real header, garbage after
    st.tuples(st.integers(0, 2000), st.integers(0, 255)).map(  # one corrupted byte in a real PNG
        lambda pos_val: (lambda b: b[: pos_val[0] % len(b)] + bytes([pos_val[1]]) + b[pos_val[0] % len(b) + 1:])(
            png_bytes(RGB))),
))
def test_random_bytes_give_only_our_error(tmp_path, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except UnZipLoRAError:
        return
    assert image.mode == "RGB"


# ----- config --------------------------------------------------------------------------------------
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**400), 10**400), st.floats(), st.text(max_size=5))
_keys = st.one_of(st.sampled_from(["model", "lora", "masks", "prompts", "train", "sample", "rank", "steps",
                                   "fraction", "seeds", "subject", "style", "base_model", "adam_betas"]),
                  st.text(max_size=4), st.integers())
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(st.dictionaries(_keys, _values, max_size=4), _values))
def test_random_configs_give_only_our_error(data):
    try:
        config_from_dict(data)
    except UnZipLoRAError:
        pass


# ----- prompts and options through the CLI -------------------------------------------------------
def _decompose_argv(*extra):
    return ["decompose", "IMG", "--subject", "cat", "--style", "sketch", "--out", "o", *extra]


@pytest.mark.parametrize(
    "argv, yaml_text, message",
    [
        (["decompose", "IMG", "--subject", " ", "--style", "x", "--out", "o"], None, "subject word is empty"),
        (["decompose", "IMG", "--subject", "cat", "--style", "  ", "--out", "o"], None, "style words are empty"),
        (["decompose", "IMG", "--out", "o"], None, "--subject WORD --style WORDS"),
        (_decompose_argv("--rank", "-3"), None, "lora.rank must be a positive integer"),
        (_decompose_argv("--steps", "0"), None, "train.steps must be a positive integer"),
        (_decompose_argv("--checkpoint-every", "-1"), None, "train.checkpoint_every"),
        (_decompose_argv(), "masks: {fraction: 0}", "masks.fraction must be in (0, 1]"),
        (_decompose_argv(), "masks: {fraction: 1.5}", "masks.fraction must be in (0, 1]"),
        (_decompose_argv(), "train: {stepz: 3}", "unknown config key train.stepz"),
        (_decompose_argv(), "trainer: {steps: 3}", "unknown config section 'trainer'"),
        (_decompose_argv(), "train: {steps: .nan}", "must be an integer"),
        (_decompose_argv(), "lora: {lr: .inf}", "must be a finite number"),
        (_decompose_argv(), "- just\n- a list", "must hold a mapping"),
        (_decompose_argv(), "train: {adam_betas: [2, -1]}", "train.adam_betas must both lie in [0, 1)"),
        (_decompose_argv(), "train: {adam_betas: [0.9, 1.0]}", "train.adam_betas must both lie in [0, 1)"),
        (_decompose_argv(), "train: {adam_eps: -1.0e-8}", "train.adam_eps must be >= 0"),
        (_decompose_argv(), "train: {weight_decay: -1}", "train.weight_decay must be >= 0"),
        (_decompose_argv("--rank", str(10**9)), None, "lora.rank must be a positive integer up to 1024"),
        (_decompose_argv(), "sample: {resolution: 7}", "sample.resolution (--resolution) must be a positive multiple"),
        (_decompose_argv(), "prompts: {content: 'A {identifier'}", "not a valid template"),
        (_decompose_argv(), "prompts: {combined: 'A {identifier.__class__}'}", "use only {identifier}"),
        (_decompose_argv("--identifier", "my cat"), None, "must be one word"),
        (_decompose_argv(), "train: {device: tpu}", "unknown device 'tpu'"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, yaml_text, message):
    monkeypatch.chdir(tmp_path)
    RGB.save(tmp_path / "IMG", format="PNG")
    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        argv = [*argv, "--config", "run.yaml"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["IMG"] + (["run.yaml"] if yaml_text else []))


# ----- models, weights and run folders ----------------------------------------------------------
def _pipeline_folder(root, class_name="StableDiffusionXLPipeline", weights="diffusion_pytorch_model.safetensors"):
    parts = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name, **{p: ["x", "y"] for p in parts}}))
    for part in parts:
        (root / part).mkdir()
        (root / part / weights).write_bytes(b"weights")
    return root


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r, "does not exist"),
        (lambda r: r.mkdir() or r, "no model_index.json"),
        (lambda r: _pipeline_folder(r, class_name="KandinskyV22Pipeline"), "unziplora supports"),
        (lambda r: _pipeline_folder(r, weights="diffusion_pytorch_model.bin"), "loads safetensors only"),
    ],
    ids=["missing", "empty-folder", "unsupported-pipeline", "pickle-weights"],
)
def test_bad_base_model_folders(tmp_path, make, message):
    with pytest.raises(UnZipLoRAError, match=message):
        check_pipeline_folder(make(tmp_path / "base"))


@pytest.mark.parametrize("name, data, message", [
    ("weights.bin", b"anything", "never loads pickled weights"),
    ("weights.pt", b"anything", "never loads pickled weights"),
    ("weights.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", "corrupt"),
    ("weights.safetensors", b"", "corrupt"),
])
def test_weights_load_from_safetensors_only(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UnZipLoRAError, match=message):
        load_safetensors(path)


@pytest.mark.parametrize("files", [{"state": "../x.safetensors"}, {"state": "/etc/passwd"}, {"state": 3}, ["a"]])
def test_manifest_paths_outside_the_run_folder_are_refused(tmp_path, files):
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "files": files}))
    with pytest.raises(UnZipLoRAError, match="run folder"):
        RunFolder.open(tmp_path)


# ----- manifests: checked whole on open (manifest.py) --------------------------------------------
def _manifest() -> dict:
    """A manifest as decompose writes it (base_manifest plus UnZipLoRA's fields), on no real model."""
    from unziplora.config import RunConfig
    from unziplora.decompose import base_manifest
    from unziplora.models.profiles import resolve_profile
    from unziplora.core.prompts import training_prompts

    config = RunConfig().with_overrides({"prompts.subject": "cat", "prompts.style": "ink", "lora.rank": 4})
    from unziplora.run.spec import RunSpec

    spec = RunSpec(BaseModel(config.model.base_model), config)
    manifest = base_manifest(spec, resolve_profile("sdxl"), training_prompts(config.prompts), RGB)
    manifest.update({"method": "unziplora", "steps": 5, "final_loss": 0.25, "device": "cpu", "dtype": "float32",
                     "mask_fraction": {"content": 0.3, "style": 0.2}, "timings": {"train_s": 1.5},
                     "files": {"state": "unziplora.safetensors"}})
    return manifest


def _edit(path: str, value):
    """Set (or with value=KeyError, delete) a dotted field of the manifest."""
    def edit(m):
        *parents, last = path.split(".")
        for key in parents:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value
    return edit


@pytest.mark.parametrize("damage, message", [
    (b"null", "holds null, not a manifest"),
    (b"[1, 2, 3]", "holds list, not a manifest"),
    (bytes(range(256)) * 4, "is not valid JSON"),
    (b'{"format_version": 1,', "is not valid JSON"),
    (_edit("prompts", KeyError), "'prompts' is missing"),
    (_edit("prompts", "a cat"), "'prompts' must be a mapping"),
    (_edit("config", KeyError), "'config' is missing"),
    (_edit("config", [1]), "'config' must be a mapping"),
    (_edit("config.sample", KeyError), "'config.sample' is missing"),
    (_edit("timings", KeyError), "'timings' is missing"),
    (_edit("timings", "fast"), "'timings' must be a mapping of names to seconds"),
    (_edit("timings.train_s", float("nan")), "'timings' must be a mapping of names to seconds"),
    (_edit("final_loss", "low"), "'final_loss' must be a finite number"),
    (_edit("base_model", KeyError), "'base_model' is missing"),
    (_edit("base_model", 3), "'base_model' must be"),
    (_edit("prompts.identifier", KeyError), "'prompts.identifier' is missing"),
    (_edit("prompts.identifier", ["sks"]), "'prompts.identifier' must be one word"),
    (_edit("prompts.identifier", "my cat"), "'prompts.identifier' must be one word"),
    (_edit("config.sample.steps", "many"), "sample.steps must be an integer"),
    (_edit("config.sample.steps", 0), "sample.steps (--steps) must be > 0"),
    (_edit("config.sample.seeds", "0"), "sample.seeds must be a list"),
    (_edit("config.sample.seeds", [2**70]), "sample.seeds (--seeds) must lie in [0, 2**63)"),
    (_edit("config.lora.rank", 10**9), "lora.rank must be a positive integer up to 1024"),
    (_edit("config_sources", {"lora.nothing": "given"}), "names 'lora.nothing'"),
    (_edit("method", "magic"), "'method' must be a method name"),
    (_edit("steps", -1), "'steps' must be a positive integer"),
    (_edit("mask_fraction.style", 7), "'mask_fraction.style' must be a fraction"),
    (_edit("input.sha256", "abc"), "'input.sha256' must be a SHA-256"),
    (_edit("format_version", -5), "'format_version' is -5, not a run format"),
    (_edit("format_version", "1"), "'format_version' is '1', not a run format"),
    (_edit("format_version", 99), "has run format 99, this unziplora reads up to 1; upgrade"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_damaged_manifests_are_one_line_naming_the_field(tmp_path, capsys, damage, message):
    manifest = _manifest()
    if callable(damage):
        damage(manifest)
        data = json.dumps(manifest).encode()
    else:
        data = damage
    (tmp_path / "manifest.json").write_bytes(data)
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_a_sound_manifest_opens_and_baselines_need_no_training_fields(tmp_path, capsys):
    manifest = _manifest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(tmp_path)]) == 0
    assert "final loss:   0.2500" in capsys.readouterr().out
    for key in ("final_loss", "mask_fraction", "device", "dtype"):
        del manifest[key]
    manifest["method"] = "b-lora"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert RunFolder.open(tmp_path).manifest.method.value == "b-lora"


# ----- weight files: checked from their headers before a tensor loads (headers.py) -----------------
def _safetensors_header(path, shapes: dict, metadata: dict | None = None):
    """A safetensors file declaring `shapes` (float32) whose data is a hole: no disk, no memory."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def _base():
    """The shapes of a made-up base model: one 32x32 and one 64x32 attention projection."""
    from unziplora.models.headers import BaseShapes

    return BaseShapes("base", {"unet.blocks.0.attn1.to_q.weight": (32, 32), "unet.blocks.0.attn2.to_k.weight": (64, 32),
                               "unet.blocks.0.norm.weight": (32,)})


Q = "unet.blocks.0.attn1.to_q"
GIB3_ROWS = 3 * 2**30 // 4 // 32  # a 3 GiB float32 A for a 32-wide layer


@pytest.mark.parametrize("shapes, base, message", [
    ({f"{Q}.lora_A.weight": (4, 32), f"{Q}.lora_B.weight": (32, 5)}, True, "has rank 4 but"),
    ({f"{Q}.lora_A.weight": (4, 32)}, True, "has no matching"),
    ({f"{Q}.lora_A.weight": (GIB3_ROWS, 32), f"{Q}.lora_B.weight": (32, GIB3_ROWS)}, True, "more than any low-rank"),
    ({f"{Q}.lora_A.weight": (GIB3_ROWS, 32), f"{Q}.lora_B.weight": (32, GIB3_ROWS)}, False, "more than any low-rank"),
    ({f"{Q}.lora_A.weight": (4, 3 * 2**28), f"{Q}.lora_B.weight": (32, 4)}, False, "wider than any SDXL-shaped"),
    ({f"{Q}.lora_A.weight": (4, 48), f"{Q}.lora_B.weight": (32, 4)}, True, "made for another base model"),
    ({"lora_unet_x.lora_down.weight": (4, 48), "lora_unet_x.lora_up.weight": (48, 4)}, True, "does not have"),
    ({f"{Q}.lora_A.weight": (4, 32), f"{Q}.lora_B.weight": (32, 4), f"{Q}.alpha": (3 * 2**28,)}, True,
     "larger than any weight of base"),
], ids=["ranks-differ", "no-B", "3GiB-rank", "3GiB-rank-no-base", "3GiB-wide-no-base", "other-model-named",
        "other-model-kohya", "3GiB-alpha"])
def test_lora_headers_are_checked_before_loading(tmp_path, shapes, base, message):
    from unziplora.run.loras import load_lora_any
    from unziplora.models.headers import check_lora_header

    path = _safetensors_header(tmp_path / "lora.safetensors", shapes)
    assert path.stat().st_blocks * 512 < 2**20  # the test itself uses no disk
    with pytest.raises(UnZipLoRAError, match=message) as info:
        check_lora_header(path, _base() if base else None)
    assert "\n" not in str(info.value)
    with pytest.raises(UnZipLoRAError, match=message):
        load_lora_any(path, _base() if base else None)  # what merge, export and generate call


def test_a_lora_that_fits_passes_its_header_check(tmp_path):
    from unziplora.models.headers import check_lora_header

    check_lora_header(_safetensors_header(tmp_path / "ok.safetensors", {
        f"{Q}.lora_A.weight": (4, 32), f"{Q}.lora_B.weight": (32, 4), f"{Q}.alpha": (),
        "lora_unet_blocks_0_attn2_to_k.lora_down.weight": (8, 32), "lora_unet_blocks_0_attn2_to_k.lora_up.weight": (64, 8),
    }), _base())


@pytest.mark.parametrize("shapes, metadata, message", [
    ({"blocks.0.attn1.to_q.content.lora_A": (4, 32)}, {"format_version": "-5"}, "version '-5', not an unziplora"),
    ({"blocks.0.attn1.to_q.content.lora_A": (4, 32)}, {"format_version": "99"}, "state format 99, this unziplora"),
    ({"blocks.0.attn1.to_q.content.lora_A": (4, 32)}, {"rank": "10"}, "holds rank-10 weights but the manifest"),
    ({"blocks.0.attn1.to_q.content.lora_A": (GIB3_ROWS, 32)}, {}, "need [4, 32]"),
    ({"blocks.0.attn1.to_q.content.lora_B": (48, 4)}, {}, "need [32, 4]"),
    ({"blocks.7.attn1.to_q.content.lora_A": (4, 32)}, {}, "has no layer blocks.7.attn1.to_q"),
    ({"blocks.0.attn1.to_q.both.lora_A": (4, 32)}, {}, "which no unziplora state has"),
], ids=["version-negative", "version-newer", "rank-differs", "3GiB", "other-model", "unknown-layer", "unknown-key"])
def test_state_file_headers_are_checked_before_loading(tmp_path, shapes, metadata, message):
    from unziplora.models.headers import check_state_header

    path = _safetensors_header(tmp_path / "unziplora.safetensors", shapes, {"format": "unziplora", **metadata})
    with pytest.raises(UnZipLoRAError, match=re.escape(message)):
        check_state_header(path, rank=4, base=_base())


# ----- sizes a base model can use (models.check_resolution) ----------------------------------------
@pytest.mark.parametrize("channels, sample_size, resolution, message", [
    ([128, 256, 512, 512], 128, 1000, "use a multiple of 64 px"),  # SDXL's VAE: 8x
    ([128, 256, 512, 512], 128, 1056, "use a multiple of 64 px"),
    ([128, 256, 512, 512], 128, 99968, "GiB to decode an image"),
    ([32, 64, 64], 16, 48, "use a multiple of 32 px"),  # the embedded model's VAE: 4x
    ([32, 64, 64], 16, 99968, "this model's own is 64 px"),
], ids=["sdxl-1000", "sdxl-1056", "sdxl-huge", "embedded-48", "embedded-huge"])
def test_sizes_the_base_model_cannot_use_are_refused_before_loading(tmp_path, channels, sample_size, resolution,
                                                                   message):
    import torch

    from unziplora.models.loading import check_resolution

    base = BaseModel("model", local=True, configs={"vae": {"block_out_channels": channels},
                                                   "unet": {"sample_size": sample_size}})
    with pytest.raises(UnZipLoRAError, match=re.escape(message)):
        check_resolution(resolution, base, torch.device("cpu"))
    check_resolution(1024 if channels[0] == 128 else 64, base, torch.device("cpu"))  # its own size passes


def test_the_decode_bound_is_a_lower_bound():
    from unziplora.models.loading import decode_bytes

    assert decode_bytes(1024, 128) == 2 * 1024 * 1024 * 128 * 4  # SDXL: 1 GiB, below what decoding really takes
    assert decode_bytes(2048, 128, images=2) == 8 * decode_bytes(1024, 128)


# ----- a full disk ------------------------------------------------------------------------------
def test_a_full_disk_is_recognised_from_python_and_from_safetensors():
    import errno

    from safetensors import SafetensorError

    from unziplora.run.outputs import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(SafetensorError("Error while serializing: I/O error: os error 280)"))
