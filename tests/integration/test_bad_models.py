"""Bad models, damaged run folders and over-long prompts, on the tiny pipeline."""

import shutil

import pytest

from unziplora.app.cli import main
from unziplora.config import SampleConfig
from unziplora.generate import generate

LONG = "A <c> cat in <s> style " + " ".join(f"with a tiny detail number {i}" for i in range(20))


def test_long_prompt_prints_what_is_cut(tiny_run, tmp_path, capsys):
    generate(LONG, tmp_path / "long", "content", run=tiny_run.path, sample=SampleConfig(steps=1, seeds=[0]))
    out = capsys.readouterr().out
    assert "note: prompt is" in out and "tokens, CLIP reads 77: only" in out


def test_corrupt_state_file_in_a_run_folder(tiny_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.path, copy)
    (copy / "unziplora.safetensors").write_bytes(b"\x00" * 100)
    assert main(["generate", str(copy), "--prompt", "A <c> cat", "--steps", "1", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "\n" not in err.strip()


def test_cli_refuses_a_pipeline_of_an_unsupported_family(tiny_base, tiny_image, tmp_path, capsys):
    fake = tmp_path / "kandinsky"
    shutil.copytree(tiny_base, fake)
    index = (fake / "model_index.json").read_text().replace("StableDiffusionXLPipeline", "KandinskyV22Pipeline")
    (fake / "model_index.json").write_text(index)
    tiny_image.save(tmp_path / "in.png")
    argv = ["decompose", str(tmp_path / "in.png"), "--subject", "cat", "--style", "x", "--out", str(tmp_path / "o"),
            "--base-model", str(fake), "--steps", "1", "--resolution", "32", "--quiet"]
    assert main(argv) == 2
    assert "holds a KandinskyV22Pipeline; unziplora supports StableDiffusionXLPipeline, StableDiffusionPipeline" in (
        capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "kandinsky"]  # no OUT, no OUT.partial


def test_sources_never_unpickle_or_run_remote_code():
    from pathlib import Path

    import unziplora

    for path in Path(unziplora.__file__).parent.rglob("*.py"):
        text = path.read_text()
        for forbidden in ("trust_remote_code=True", "torch.load(", "pickle.load", "custom_pipeline="):
            assert forbidden not in text, f"{path.name}: {forbidden}"



# ----- memory: weight files are checked from their headers before any tensor loads -------------------
def sparse_copy(source, target, key, shape):
    """`source` with tensor `key` replaced by a float32 `shape` of zeros stored as a hole: a 3 GiB
    tensor costs no disk (and, if it is refused from the header, no memory)."""
    import json
    import struct

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(source), "pt") as fh:
        metadata = fh.metadata()
    tensors = {k: v for k, v in load_file(str(source)).items() if k != key}
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        blob = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32" if tensor.dtype.is_floating_point else "U8", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    size = 4 * shape[0] * shape[1]
    header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(target, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
        fh.truncate(8 + len(raw) + offset + size)
    return target


def with_a_3gib_tensor(run, file, suffix):
    from safetensors import safe_open

    path = run / file
    with safe_open(str(path), "pt") as fh:
        key = next(k for k in sorted(fh.keys()) if k.endswith(suffix))
        features = fh.get_slice(key).get_shape()[1]
    sparse_copy(path, path.with_name("big.safetensors"), key, (3 * 2**30 // 4 // features, features))
    path.with_name("big.safetensors").replace(path)
    assert path.stat().st_size > 3 * 2**30 and path.stat().st_blocks * 512 < 2**24
    return run


MEASURE = """
import json, resource, sys
from unziplora.app.cli import main
results = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"rcs": results, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def test_a_3gib_tensor_in_a_sparse_file_is_refused_with_little_memory(tiny_run, tmp_path):
    """merge, export and generate (each LoRA and the two-branch state) on files declaring 3 GiB
    tensors: refused from the header, in one process whose peak memory stays that of its imports
    (the unchecked commands peaked at 3.4 to 6.5 GB)."""
    import json
    import os
    import subprocess
    import sys

    lora_run = with_a_3gib_tensor(shutil.copytree(tiny_run.path, tmp_path / "lora"),
                                  "content_lora/pytorch_lora_weights.safetensors", "lora_A.weight")
    state_run = with_a_3gib_tensor(shutil.copytree(tiny_run.path, tmp_path / "state"), "unziplora.safetensors",
                                   "content.lora_A")
    gen = ["--prompt", "A <c> cat", "--steps", "1", "--seeds", "0", "--quiet"]
    commands = [
        ["merge", str(lora_run / "content_lora"), str(tiny_run.path), "--out", str(tmp_path / "m")],
        ["export", str(lora_run), "--format", "kohya", "--out", str(tmp_path / "k")],
        ["generate", str(lora_run), "--mode", "content", *gen, "--out", str(tmp_path / "g1")],
        ["generate", str(state_run), "--mode", "both", *gen, "--out", str(tmp_path / "g2")],
    ]
    child = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(commands)], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(child.stdout.strip().splitlines()[-1])
    errors = [line for line in child.stderr.splitlines() if line.startswith("error: ")]
    assert report["rcs"] == [2, 2, 2, 2] and len(errors) == 4, child.stderr
    assert all("has rank" in e or "need [" in e for e in errors), errors
    assert "Traceback" not in child.stderr
    assert report["peak_mb"] < 1500, report
    assert not any((tmp_path / name).exists() for name in ("m", "k", "g1", "g2"))


# ----- generate --mode content|style: diffusers' errors are one line -------------------------------------
@pytest.fixture(scope="module")
def other_shaped_base(tmp_path_factory):
    from tests.pipelines import TinySDXLSpec, save_tiny_sdxl_pipeline

    spec = TinySDXLSpec(block_out_channels=(32, 64, 128), attention_head_dim=(4, 8, 16), text_hidden_size=48)
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("other") / "base", spec)


@pytest.mark.parametrize("mode", ["content", "style"])
@pytest.mark.parametrize("problem", ["truncated-lora", "other-base-model", "diffusers-refuses"])
def test_generate_content_or_style_errors_are_one_line(tiny_run, tmp_path, capsys, monkeypatch, other_shaped_base,
                                                       mode, problem):
    run = shutil.copytree(tiny_run.path, tmp_path / "cat")
    argv = ["generate", str(run), "--mode", mode, "--prompt", "A <c> cat", "--steps", "1", "--seeds", "0",
            "--out", str(tmp_path / "g"), "--quiet"]
    lora = run / f"{mode}_lora" / "pytorch_lora_weights.safetensors"
    if problem == "truncated-lora":
        lora.write_bytes(lora.read_bytes()[:500])
        message = "is corrupt or not a safetensors file"
    elif problem == "other-base-model":
        argv += ["--base-model", str(other_shaped_base)]
        message = "the LoRA was made for another base model"
    else:  # whatever the header check misses, diffusers' own refusal is one line too
        from diffusers import StableDiffusionXLPipeline

        def refuses(*args, **kwargs):
            raise RuntimeError("Error(s) in loading state_dict for UNet2DConditionModel:\n\tsize mismatch for x")

        monkeypatch.setattr(StableDiffusionXLPipeline, "load_lora_weights", refuses)
        message = "does not load into"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()


# ----- sizes the base model cannot use, refused before it loads ----------------------------------------
@pytest.mark.parametrize("resolution, message", [
    ("40", "use a multiple of 16 px"),  # the tiny model's VAE: 2x, latents multiples of 8
    ("99968", "GiB to decode an image at that size"),  # a multiple of 16, beyond any machine's memory
])
@pytest.mark.parametrize("command", ["decompose", "generate"])
def test_sizes_the_base_model_cannot_use_are_refused_before_loading(tiny_base, tiny_run, tiny_image, tmp_path,
                                                                   capsys, monkeypatch, command, resolution, message):
    import unziplora.decompose
    import unziplora.generate

    import unziplora.models.loading

    monkeypatch.setattr(unziplora.models.loading, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model first"))
    tiny_image.save(tmp_path / "in.png")
    argv = {
        "decompose": ["decompose", str(tmp_path / "in.png"), "--subject", "cat", "--style", "x", "--out",
                      str(tmp_path / "o"), "--base-model", str(tiny_base), "--steps", "1", "--quiet",
                      "--allow-large-resolution"],  # the flag lifts the size rule, never what memory cannot hold
        "generate": ["generate", str(tiny_run.path), "--prompt", "A <c> cat", "--out", str(tmp_path / "o"), "--quiet"],
    }[command]
    assert main(argv + ["--resolution", resolution]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
