"""Inspiration Tree (arXiv 2305.18203): two textual-inversion tokens, the best of four seeds, assigned to
content and style by the rule of docs/method.md §12, exported as files stock diffusers loads."""

import json
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import unziplora.methods.inspiration_seeds as seeds
from unziplora.app.cli import main
from unziplora.config import SampleConfig
from unziplora.export import export_run
from unziplora.generate import generate
from unziplora.run.folder import RunFolder

from ..pipelines import build_clip_tokenizer

TOKENS = ("<*>", "<&>")


@pytest.fixture()
def run(tiny_base, tiny_image, tmp_path, clip_dir, small_selection):
    image = tmp_path / "in.png"
    tiny_image.save(image)
    out = tmp_path / "it"
    assert main(["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(out),
                 "--base-model", str(tiny_base), "--steps", "4", "--resolution", "32", "--sample-steps", "2",
                 "--quiet", "--method", "inspiration-tree", "--clip", str(clip_dir)]) == 0
    return RunFolder.open(out)


def test_the_seed_selection_shows_its_progress_unless_quiet(tiny_base, tiny_image, tmp_path, clip_dir,
                                                            small_selection, capfd):
    """The selection (4 seeds' training and their scoring generations) is most of a run's time: each
    part has a labelled bar, and --quiet shows none."""
    image = tmp_path / "in.png"
    tiny_image.save(image)
    shown = {}
    for flags in ([], ["--quiet"]):
        assert main(["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(tmp_path / "it"),
                     "--base-model", str(tiny_base), "--steps", "4", "--resolution", "32", "--sample-steps", "2",
                     "--method", "inspiration-tree", "--clip", str(clip_dir), "--force", *flags]) == 0
        shown[bool(flags)] = capfd.readouterr().err
    for label in ("seed 1/4 (selection)", "seed 4/4 (selection)", "seed 4/4 scoring <&> x 4", "assigning <*> x 4"):
        assert label in shown[False] and label not in shown[True]


def test_a_stop_request_in_the_seed_selection_stops_it_and_keeps_nothing(tiny_base, tiny_image, tmp_path, clip_dir,
                                                                          small_selection):
    """The page's Cancel (and its progress) reach the selection's training, not only the final one: a
    stop asked at the first step ends the run there, with one line, and leaves no folder behind."""
    from unziplora.core.callbacks import Callback, StopOnRequest
    from unziplora.decompose import decompose
    from unziplora.errors import TrainingInterrupted
    from unziplora.methods import Method, resolve_spec
    from unziplora.models.base import BaseModel

    class Seen(Callback):
        def __init__(self):
            self.steps = []

        def on_step(self, loop, log):
            self.steps.append((loop.step, loop.total_steps))

    stop = threading.Event()
    stop.set()
    spec = resolve_spec({"prompts.subject": "cat", "prompts.style": "sketch", "train.steps": 10, "train.resolution": 32,
                         "sample.steps": 2, "train.clip_model": str(clip_dir)},
                        method=Method.INSPIRATION_TREE, base=BaseModel.resolve(str(tiny_base)))
    seen = Seen()
    with pytest.raises(TrainingInterrupted, match=r"seed selection \(seed 1/4, step 1 of 2\).*nothing was kept"):
        decompose(tiny_image, tmp_path / "it", spec, progress=False, callbacks=[seen, StopOnRequest(stop)])
    assert seen.steps == [(1, 2)]  # one step of the first seed's 2 (a fifth of 10), then the stop
    assert not (tmp_path / "it").exists()


def stock_pipe(base, run_path, tokens):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    for branch, token in tokens.items():
        for name in ("text_encoder", "text_encoder_2"):
            pipe.load_textual_inversion(str(run_path / f"{branch}_tokens" / f"{name}.safetensors"), token=token,
                                        text_encoder=getattr(pipe, name),
                                        tokenizer=getattr(pipe, name.replace("text_encoder", "tokenizer")))
    return pipe


def test_decompose_selects_a_seed_assigns_the_tokens_and_records_it(run):
    m, extra = run.manifest, run.manifest.extra
    assert m.method.value == "inspiration-tree" and m.steps == 4
    selection = extra["seed_selection"]
    assert selection["seeds"] == [0, 1000, 1234, 111] and selection["steps_per_seed"] == 1  # a fifth of 4 steps
    scores = {int(s): v["score"] for s, v in selection["scores"].items()}
    assert selection["chosen_seed"] == max(scores, key=scores.get)
    for parts in selection["scores"].values():  # the reference's score from its three similarities
        assert parts["score"] == pytest.approx(parts["s_l"] + parts["s_r"] + min(parts["s_l"], parts["s_r"]) - parts["s_lr"],
                                               abs=1e-5)
    assignment = extra["token_assignment"]
    assert {assignment["content"], assignment["style"]} == set(TOKENS)
    subject = assignment["subject_scores"]
    assert assignment["content"] == (TOKENS[0] if subject[TOKENS[0]] >= subject[TOKENS[1]] else TOKENS[1])
    assert (m.prompts.identifier, m.prompts.style_words) == (assignment["content"], assignment["style"])
    assert extra["textual_inversion"]["text_encoders"] == ["text_encoder", "text_encoder_2"]
    assert extra["textual_inversion"]["lr"] == pytest.approx(4e-3)  # 5e-4 scaled by batch 2 x accumulation 4
    assert len((run.path / "loss.csv").read_text().splitlines()) == 1 + 4  # the chosen seed's first step + 3 more
    # the tokens trained: they start equal and learn apart, in both encoders
    for name in ("text_encoder", "text_encoder_2"):
        content = load_file(run.path / "content_tokens" / f"{name}.safetensors")
        style = load_file(run.path / "style_tokens" / f"{name}.safetensors")
        assert list(content) == [assignment["content"]] and list(style) == [assignment["style"]]
        assert not torch.equal(content[assignment["content"]], style[assignment["style"]])


def test_tokens_load_in_stock_diffusers_and_generate_matches_it(run, tiny_base, tmp_path):
    a = run.manifest.extra["token_assignment"]
    pipe = stock_pipe(tiny_base, run.path, {"content": a["content"], "style": a["style"]})
    for name in ("text_encoder", "text_encoder_2"):
        tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"))
        row = getattr(pipe, name).get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(a["content"])]
        assert torch.equal(row, load_file(run.path / "content_tokens" / f"{name}.safetensors")[a["content"]])
    sample = SampleConfig(steps=2, seeds=[0])
    both = generate("A <c> cat in <s> style", tmp_path / "both", "both", run=run.path, sample=sample)
    record = json.loads((tmp_path / "both" / "generation.json").read_text())
    assert record["prompts"] == {"prompt": f"A {a['content']} cat in {a['style']} style"}
    expected = pipe(prompt=record["prompts"]["prompt"], num_inference_steps=2, guidance_scale=run.manifest.config.sample.guidance_scale,
                    height=32, width=32, generator=torch.Generator().manual_seed(0)).images[0]
    diff = np.abs(np.asarray(Image.open(both[0]), dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert diff.max() <= 2
    for mode, prompt, expanded in (("content", "A <c> cat", f"A {a['content']} cat"),
                                   ("style", "A dog in <s> style", f"A dog in {a['style']} style")):
        paths = generate(prompt, tmp_path / mode, mode, run=run.path, sample=sample)
        assert paths[0].is_file()
        assert json.loads((tmp_path / mode / "generation.json").read_text())["prompts"] == {"prompt": expanded}
    # across two runs whose tokens share a name, the style run's token is loaded under another
    cross = generate("A <c> cat in <s> style", tmp_path / "cross", "cross", content_run=run.path, style_run=run.path,
                     sample=sample, style_words=a["content"])
    assert cross[0].is_file()


def test_model_card_code_runs_and_exports_load_in_stock_diffusers(run, tiny_base, tmp_path):
    card = (run.path / "README.md").read_text()
    assert "content_lora" not in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # the card's snippet, as pasted
    a = run.manifest.extra["token_assignment"]
    assert a["content"] in scope["pipe"].tokenizer_2.get_vocab() and scope["image"].size == (32, 32)

    diffusers_files = export_run(run.path, "diffusers", tmp_path / "d")
    assert sorted(p.name for p in diffusers_files) == sorted(
        f"it_{b}_{n}.safetensors" for b in ("content", "style") for n in ("text_encoder", "text_encoder_2"))
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_base))
    pipe.load_textual_inversion(str(tmp_path / "d" / "it_style_text_encoder.safetensors"))  # its token from the file
    assert a["style"] in pipe.tokenizer.get_vocab()
    webui = export_run(run.path, "kohya", tmp_path / "k")
    state = load_file(tmp_path / "k" / "it_content.safetensors")
    assert sorted(state) == ["clip_g", "clip_l"] and [p.name for p in webui] == ["it_content.safetensors",
                                                                                 "it_style.safetensors"]
    # diffusers' documented way to load an SDXL embedding file
    pipe.load_textual_inversion(state["clip_g"], token="<c>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state["clip_l"], token="<c>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    row = pipe.text_encoder_2.get_input_embeddings().weight[pipe.tokenizer_2.convert_tokens_to_ids("<c>")]
    assert torch.equal(row, load_file(run.path / "content_tokens" / "text_encoder_2.safetensors")[a["content"]])


def test_without_clip_another_base_model_is_refused_in_one_line(tiny_base, tiny_image, tmp_path, capsys):
    image = tmp_path / "in.png"
    tiny_image.save(image)
    assert main(["decompose", str(image), "--subject", "cat", "--style", "sketch", "--out", str(tmp_path / "it"),
                 "--base-model", str(tiny_base), "--steps", "2", "--resolution", "32", "--quiet",
                 "--method", "inspiration-tree"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip FOLDER" in err
    assert not (tmp_path / "it").exists() and not (tmp_path / "it.partial").exists()


def test_seed_score_and_assignment_with_the_toy_worlds_oracles(monkeypatch):
    """The embedded model's stand-in for CLIP: a token drawing the input's subject in other styles is
    the content token, whichever of the two it is; a seed whose tokens are each consistent and
    distinct scores above one whose tokens draw the same mixture."""
    from unziplora.toyworld import heldout_images, render

    (subject, style, image), (other_subject, other_style, _) = heldout_images(2, 64)
    same_subject = [render(subject, other_style, 64, seed=s) for s in range(4)]
    same_style = [render(other_subject, style, 64, seed=s) for s in range(4)]
    features = seeds.OracleFeatures()
    for order in ((same_subject, same_style), (same_style, same_subject)):
        monkeypatch.setattr(seeds, "token_images", lambda pipe, token, config, *shown, o=order: o[TOKENS.index(token)])
        config = type("C", (), {"prompts": type("P", (), {"subject": subject.cls})})
        found = seeds.assign_tokens(None, config, features, image, TOKENS)
        assert found["content"] == TOKENS[0 if order[0] is same_subject else 1]
    mixed = same_subject[:2] + same_style[:2]
    assert seeds.consistency(features, same_subject, same_style)["score"] > seeds.consistency(features, mixed, mixed)["score"]


def test_the_quality_bench_has_an_inspiration_tree_row(tiny_base, tmp_path, monkeypatch, small_selection):
    """The row runs like the others (same images, seeds, oracles); the tiny model stands in for the
    embedded one, whose seed selection scores with the toy world's oracles."""
    import unziplora.methods.inspiration_tree as tree
    from unziplora.bench.quality import METRICS, run_quality
    from unziplora.models.base import BaseModel

    monkeypatch.setattr(tree, "require_features", lambda spec: None)
    monkeypatch.setattr(tree, "features_for", lambda spec: seeds.OracleFeatures())
    report = run_quality(None, BaseModel.resolve(tiny_base), tmp_path / "work", n_images=2, seeds=1, steps=2,
                         rank=2, sample_steps=1, methods=("inspiration-tree",))
    row = report["methods"]["inspiration-tree"]
    assert set(METRICS) <= set(row) and row["train_s_per_image"] > 0
    manifest = json.loads((tmp_path / "work" / "inspiration-tree" / "img00" / "manifest.json").read_text())
    assert manifest["seed_selection"]["features"].startswith("toy-world oracles") and manifest["steps"] == 2


def test_stable_diffusion_1x_has_one_encoder_and_one_token_file_each(tiny_image, tmp_path, clip_dir, small_selection):
    """The reference's own family: one text encoder, one file per token; the webui file is SD 1.x's."""
    from diffusers import StableDiffusionPipeline

    from unziplora.decompose import decompose
    from unziplora.methods import resolve_spec

    from ..pipelines import save_tiny_sd_pipeline

    base = save_tiny_sd_pipeline(tmp_path / "sd")
    spec = resolve_spec({"model.base_model": str(base), "prompts.subject": "cat", "prompts.style": "sketch",
                         "train.steps": 2, "train.resolution": 32, "sample.steps": 2, "train.clip_model": str(clip_dir)},
                        method="inspiration-tree")
    run = decompose(tiny_image, tmp_path / "it", spec, progress=False)
    a = run.manifest.extra["token_assignment"]
    assert sorted(p.name for p in (run.path / "content_tokens").iterdir()) == ["text_encoder.safetensors"]
    export_run(run.path, "kohya", tmp_path / "k")
    pipe = StableDiffusionPipeline.from_pretrained(str(base))
    pipe.load_textual_inversion(str(tmp_path / "k" / "it_style.safetensors"), token=a["style"])  # emb_params
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(a["style"])]
    assert torch.equal(row, load_file(run.path / "style_tokens" / "text_encoder.safetensors")[a["style"]])
    paths = generate("A <c> cat in <s> style", tmp_path / "g", "both", run=run.path, sample=SampleConfig(steps=2, seeds=[0]))
    assert paths[0].is_file()
