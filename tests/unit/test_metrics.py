"""Metric extractors load from disk (tiny random models of the real classes) and score sanely."""

import numpy as np
import pytest
import torch
from PIL import Image

from unziplora.errors import UnZipLoRAError
from unziplora.metrics.models import CSD_HEADS, ClipEncoder, CsdEncoder, DinoEncoder
from unziplora.metrics.scores import evaluate, mean_pairwise_cosine
from unziplora.run.folder import save_safetensors
from tests.pipelines import build_clip_tokenizer

VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig,
                              CLIPVisionModel, ViTConfig, ViTImageProcessor, ViTModel)

    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(["a", "cat", "in", "style", "sketch"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(tokenizer), max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "clip")
    ViTModel(ViTConfig(**VISION), add_pooling_layer=False).save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(root / "csd")
    image_processor.save_pretrained(root / "csd")
    save_safetensors({"style.weight": torch.randn(8, 32), "content.weight": torch.randn(8, 32)}, root / "csd" / CSD_HEADS)
    return root


def images(seed, n=3):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_identical_images_score_one_and_scores_are_symmetric(model_dirs):
    clip, dino, csd = ClipEncoder(str(model_dirs / "clip")), DinoEncoder(str(model_dirs / "dino")), CsdEncoder(str(model_dirs / "csd"))
    a, b = images(1, 1), images(2, 2)
    same = evaluate(a, a, clip=clip, dino=dino, csd=csd)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in same.values()), same
    forward, backward = evaluate(a, b, clip=clip, dino=dino, csd=csd), evaluate(b, a, clip=clip, dino=dino, csd=csd)
    assert forward == pytest.approx(backward, abs=1e-6)
    assert set(forward) == {"clip_i", "dino", "csd_style", "csd_content"}
    assert clip.images(b).shape == (2, 16) and dino.images(b).shape == (2, 32)
    style, content = csd.images(b)
    assert style.shape == content.shape == (2, 8)
    with_text = evaluate(b, a, prompts=["a cat", "a cat in sketch style"], clip=clip)
    assert -1 <= with_text["clip_t"] <= 1


def test_missing_models_are_one_line_errors(tmp_path):
    with pytest.raises(UnZipLoRAError, match="--clip PATH"):
        ClipEncoder(str(tmp_path / "nothing"))
    with pytest.raises(UnZipLoRAError, match="--dino PATH"):
        DinoEncoder(str(tmp_path / "nothing"))
    with pytest.raises(UnZipLoRAError, match="csd_heads"):
        CsdEncoder(str(tmp_path))


def test_mean_pairwise_cosine_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0]])
    assert mean_pairwise_cosine(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(a, torch.ones(1, 3))


def test_eval_cli(model_dirs, tmp_path, capsys):
    from unziplora.app.cli import main

    for i, image in enumerate(images(3, 2)):
        image.save(tmp_path / f"seed{i}.png")
    ref = tmp_path / "ref.png"
    images(4, 1)[0].save(ref)
    argv = ["eval", str(tmp_path), "--reference", str(ref), "--prompt", "a cat", "--clip", str(model_dirs / "clip"),
            "--dino", str(model_dirs / "dino"), "--csd", str(model_dirs / "csd"), "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    import json

    assert set(json.loads((tmp_path / "s.json").read_text())["scores"]) == {"clip_i", "clip_t", "dino", "csd_style", "csd_content"}
    assert main(["eval", str(tmp_path), "--reference", str(ref), "--metrics", "dino", "--dino", str(tmp_path / "none")]) == 2
    assert "--dino PATH" in capsys.readouterr().err
