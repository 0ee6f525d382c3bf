"""FLUX.1 through the commands SDXL and SD pass: sampling with the branch streams, decompose (API,
CLI, previews), generation in every mode, fused generation, exports, resume."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image

from unziplora.core.inject import inject_two_branch_lora
from unziplora.core.prompts import encode_prompts
from unziplora.core.sampling import Conditioning, sample_images
from unziplora.config import SampleConfig
from unziplora.models.base import BaseModel
from unziplora.models.profiles import uniform_profile
from unziplora.names import Branch, Role

from ..conftest import interrupt_and_resume
from ..pipelines import save_tiny_flux_pipeline

SETTINGS = {"prompts.subject": "cat", "prompts.style": "sketch", "train.steps": 4, "train.resolution": 64,
            "lora.rank": 4, "masks.refresh_every": 2, "sample.steps": 2, "sample.seeds": [0],
            "train.checkpoint_every": 2, "train.preview_every": 2}


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    return BaseModel.resolve(save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "tiny-flux"))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in images])


def test_sampling_carries_each_branchs_stream_to_the_processor(flux_base):
    """FluxPipeline is called with p, its pooled embedding and the guidance value; p_c's and p_s's
    streams reach the prompt-separated processor at every step, as in training."""
    pipe = flux_base.load()
    lora = inject_two_branch_lora(pipe.transformer, uniform_profile(Role.ALL, Role.ALL, "all"), 4)
    states, pooled = encode_prompts(pipe, ["A monadikos cat in sketch style", "A monadikos cat",
                                           "A cat in sketch style", "A dog in ink style"], "cpu")
    sample = SampleConfig(steps=2, seeds=[0], guidance_scale=3.5)

    def images(content, style):
        return pixels(sample_images(pipe, Conditioning(states[0:1], pooled[0:1], content, style), sample, 32))

    both = images(states[1:2], states[2:3])
    assert both.shape == (1, 32, 32, 3) and both.std() > 0
    assert np.abs(both - images(states[1:2], states[3:4])).max() > 0  # the style branch reads p_s's stream
    lora.set_active({Branch.CONTENT})
    assert np.array_equal(images(states[1:2], states[2:3]), images(states[1:2], states[3:4]))  # content ignores p_s
    assert np.abs(images(states[1:2], states[2:3]) - images(states[3:4], states[2:3])).max() > 0


def test_cfg_rescale_is_refused_on_flux_before_anything_loads(flux_base, tiny_image, tmp_path, monkeypatch):
    from unziplora.decompose import decompose
    from unziplora.errors import UnZipLoRAError
    from unziplora.methods import resolve_spec

    pipe = flux_base.load()
    states, pooled = encode_prompts(pipe, ["A cat"], "cpu")
    with pytest.raises(UnZipLoRAError, match="guidance_rescale 0.7 is CFG rescale"):
        sample_images(pipe, Conditioning(states, pooled), SampleConfig(steps=2, seeds=[0], guidance_rescale=0.7), 32)
    monkeypatch.setattr(BaseModel, "load", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    spec = resolve_spec({**SETTINGS, "sample.guidance_rescale": 0.7}, base=flux_base)
    with pytest.raises(UnZipLoRAError, match="FLUX.1 samples without a CFG batch"):
        decompose(tiny_image, tmp_path / "run", spec, progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.fixture(scope="module")
def flux_run(flux_base, tiny_image, tmp_path_factory):
    from unziplora.decompose import decompose
    from unziplora.methods import resolve_spec

    spec = resolve_spec(SETTINGS, base=flux_base)
    return decompose(tiny_image, tmp_path_factory.mktemp("fluxrun") / "run", spec, progress=False)


def test_decompose_writes_previews_loras_and_a_card_for_flux(flux_base, flux_run):
    assert flux_run.manifest.prompts.combined == "A monadikos cat in sketch style"
    assert flux_run.manifest.mask_fraction["content"] > 0
    assert Image.open(flux_run.path / "preview.png").size[0] > 0
    assert (flux_run.path / "previews" / "step_00002.png").is_file()  # written during training
    card = (flux_run.path / "README.md").read_text()
    assert "FluxPipeline.from_pretrained" in card and "torch.bfloat16" in card
    assert "guidance_rescale" not in card  # FluxPipeline takes no CFG rescale
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    pipe.load_lora_weights(str(flux_run.path / "style_lora"), adapter_name="style")
    assert "style" in pipe.get_list_adapters()["transformer"]


@pytest.mark.parametrize("mode", ["content", "style", "both", "cross"])
def test_generate_in_every_mode(flux_run, tmp_path, mode):
    from unziplora.generate import generate

    sources = {"content_run": flux_run.path, "style_run": flux_run.path} if mode == "cross" else {"run": flux_run.path}
    paths = generate("A <c> cat in <s> style", tmp_path / mode, mode, steps=2, **sources)
    image = np.asarray(Image.open(paths[0]), dtype=np.float32)
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_fused_generation_folds_the_image_projections_and_draws_the_same_image(flux_run, tmp_path):
    """FLUX's fused path folds the double blocks' image projections (one input for both branches) and
    keeps every text projection two-branch: the images are those of the unfused layers."""
    import unziplora.core.flux_sampling as flux_sampling
    from unziplora.generate import generate

    folded = []
    real = flux_sampling.fold_image_projections
    flux_sampling.fold_image_projections = lambda transformer: folded.append(real(transformer)) or folded[-1]
    try:
        fused = generate("A <c> cat in <s> style", tmp_path / "fused", "both", run=flux_run.path, steps=2, fused=True)
    finally:
        flux_sampling.fold_image_projections = real
    plain = generate("A <c> cat in <s> style", tmp_path / "plain", "both", run=flux_run.path, steps=2, fused=False)
    assert folded == [2 * 4]  # two double blocks, to_q/k/v and to_out.0 each
    difference = pixels([Image.open(fused[0])]) - pixels([Image.open(plain[0])])
    assert np.abs(difference).max() <= 1  # equal up to rounding to 8-bit pixels


def test_exports_load_in_stock_diffusers(flux_base, flux_run, tmp_path):
    from unziplora.export import export_run
    from unziplora.run.folder import load_safetensors

    diffusers_files = export_run(flux_run.path, "diffusers", tmp_path / "diffusers")
    kohya_files = export_run(flux_run.path, "kohya", tmp_path / "kohya")
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    pipe.load_lora_weights(str(diffusers_files[0]), adapter_name="content")
    assert "content" in pipe.get_list_adapters()["transformer"]
    kohya = load_safetensors(kohya_files[0])
    assert {k.split(".")[0] for k in kohya} == {
        f"lora_unet_double_blocks_{i}_{m}" for i in (0, 1) for m in ("img_attn_qkv", "img_attn_proj", "txt_attn_qkv",
                                                                     "txt_attn_proj")} | {
        f"lora_unet_single_blocks_{i}_linear1" for i in (0, 1)}


def test_the_kohya_layout_is_what_diffusers_reads_back_exactly():
    """Round trip on FLUX.1-dev's full-size modules (diffusers' converter names its 19 + 38 blocks and
    3072 / 12288 widths): our kohya file, read by FluxPipeline.lora_state_dict (diffusers'
    from-kohya converter), is the diffusers LoRA we started from, plus a zero LoRA on each single
    block's proj_mlp (part of linear1)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from unziplora.core.flux import flux_projections
    from unziplora.run.flux_kohya import flux_to_kohya

    with init_empty_weights():
        transformer = FluxTransformer2DModel()
    generator, rank, ours = torch.Generator().manual_seed(0), 2, {}
    for name, linear in flux_projections(transformer):
        ours[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator)
        ours[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator)
    back = FluxPipeline.lora_state_dict(flux_to_kohya(ours))
    back = back[0] if isinstance(back, tuple) else back
    mlp = {k: v for k, v in back.items() if ".proj_mlp." in k}
    assert len(mlp) == 2 * 38 and all(not v.any() for v in mlp.values())
    rest = {k: v for k, v in back.items() if k not in mlp}
    assert sorted(rest) == sorted(ours)
    assert all(torch.equal(rest[k], ours[k]) for k in ours)


def test_an_interrupted_run_resumes(flux_base, tiny_image, tmp_path):
    run = interrupt_and_resume(flux_base.source, tiny_image, tmp_path)
    assert (run / "content_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "preview.png").is_file()


def test_generate_refuses_cfg_rescale_on_flux_before_loading(flux_run, tmp_path, monkeypatch):
    from unziplora.errors import UnZipLoRAError
    from unziplora.generate import generate

    monkeypatch.setattr(BaseModel, "load", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    with pytest.raises(UnZipLoRAError, match="guidance_rescale 0.7 is CFG rescale"):
        generate("A <c> cat", tmp_path / "out", "content", run=flux_run.path, guidance_rescale=0.7)


@pytest.mark.parametrize("method", ["dreambooth-lora", "b-lora", "inspiration-tree"])
def test_unet_only_methods_refuse_flux_in_one_line_before_loading(flux_base, tiny_image, tmp_path, monkeypatch,
                                                                   method):
    from unziplora.decompose import decompose
    from unziplora.errors import UnZipLoRAError
    from unziplora.methods import resolve_spec

    monkeypatch.setattr(BaseModel, "load", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    spec = resolve_spec({**SETTINGS, "sample.guidance_rescale": 0.0}, base=flux_base, method=method)
    with pytest.raises(UnZipLoRAError, match=f"--method {method} trains UNet base models .* use --method unziplora"):
        decompose(tiny_image, tmp_path / "run", spec, progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


FLUX_KWARGS = dict(prompt="A monadikos cat in sketch style", num_inference_steps=2, height=32, width=32,
                   guidance_scale=3.5, output_type="np")


def flux_images(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**FLUX_KWARGS, generator=torch.Generator().manual_seed(0)).images


def test_direct_merge_of_flux_loras_is_both_adapters_in_stock_diffusers(flux_base, flux_run, tmp_path):
    """The merged FLUX LoRA (a run's content + an exported style file) is one `transformer.` LoRA that
    FluxPipeline loads, and draws what the two adapters draw together, not the base model's image.
    (diffusers reads kohya FLUX files for FLUX.1's own widths only, so the tiny model's is diffusers'.)"""
    from unziplora.export import export_run
    from unziplora.methods.merge import merge
    from unziplora.run.folder import load_safetensors

    style_file = export_run(flux_run.path, "diffusers", tmp_path / "d")[1]
    out = merge(flux_run.path, style_file, tmp_path / "merged")
    merged_state = load_safetensors(out / "pytorch_lora_weights.safetensors")
    assert merged_state and all(k.startswith("transformer.") for k in merged_state)
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    plain = flux_images(pipe)
    pipe.load_lora_weights(str(flux_run.lora_dir(Branch.CONTENT)), adapter_name="content")
    pipe.load_lora_weights(str(flux_run.lora_dir(Branch.STYLE)), adapter_name="style")
    pipe.set_adapters(["content", "style"], [1.0, 1.0])
    both = flux_images(pipe)
    pipe.delete_adapters(["content", "style"])
    pipe.load_lora_weights(str(out), adapter_name="merged")
    merged = flux_images(pipe)
    assert np.allclose(both, merged, atol=1e-4)
    assert np.abs(merged - plain).max() > 1e-3  # the LoRA changes the image


def test_ziplora_merge_trains_mergers_on_the_flux_transformer(flux_base, flux_run, tmp_path):
    """ZipLoRA on FLUX: the mergers train with the flow-matching path (the loss falls from its first
    value as they learn) and the result is an ordinary FLUX LoRA; B is untouched, A's columns scaled."""
    from unziplora.methods.merge import merge
    from unziplora.run.folder import load_safetensors

    direct = load_safetensors(merge(flux_run.path, flux_run.path, tmp_path / "d") / "pytorch_lora_weights.safetensors")
    zipped_dir = merge(flux_run.path, flux_run.path, tmp_path / "zip", method="ziplora", steps=3, device="cpu")
    zipped = load_safetensors(zipped_dir / "pytorch_lora_weights.safetensors")
    assert zipped.keys() == direct.keys() and all(k.startswith("transformer.") for k in zipped)
    assert all(torch.equal(zipped[k], direct[k]) for k in zipped if "lora_B" in k)
    assert any(not torch.allclose(zipped[k], direct[k]) for k in zipped if "lora_A" in k)
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    pipe.load_lora_weights(str(zipped_dir), adapter_name="zip")
    assert "zip" in pipe.get_list_adapters()["transformer"]


def test_ziplora_on_flux_distils_each_lora_with_the_flow_objective(flux_base, flux_run):
    """One ZipLoRA step on FLUX noises both latents on one straight path (same noise, same sigma) and
    compares the merged transformer's velocity with each LoRA's own: with mergers 1 and one LoRA
    merged with itself the merged model is the LoRA at twice the update, so the MSE is positive."""
    from unziplora.core.flow import FlowMatching
    from unziplora.methods.ziplora import ziplora_merge
    from unziplora.run.sources import BranchSource

    sources = [BranchSource.plain_lora(flux_run.path, b, flux_base.shapes(), flux_run) for b in (Branch.CONTENT, Branch.STYLE)]
    history = []

    class Log:
        def on_step(self, loop, log):
            assert isinstance(loop.objective, FlowMatching)
            history.append(log)

        def __getattr__(self, name):
            return lambda *a, **k: None

    ziplora_merge(sources[0], sources[1], flux_base, ("A monadikos cat", "A cat in sketch style"), 64, steps=2,
                  device="cpu", callbacks=[Log()])
    assert len(history) == 2 and all(np.isfinite(log.loss) and log.loss > 0 for log in history)


def test_merge_refuses_loras_of_two_families_in_one_line(flux_run, tiny_run, tmp_path):
    from unziplora.errors import UnZipLoRAError
    from unziplora.methods.merge import merge

    with pytest.raises(UnZipLoRAError, match="content LoRA is for a FLUX.1 model and the style LoRA for a SDXL"):
        merge(flux_run.path, tiny_run.path, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_probe_trains_one_lora_on_the_flux_transformer_and_scores_its_blocks(flux_base, tmp_path):
    """`unziplora probe` on FLUX: one PEFT LoRA through transformer.add_adapter on every projection
    UnZipLoRA trains (image and text ones), trained with flow matching; every double- and
    single-stream block is a group; the profile written fits the FLUX transformer."""
    import yaml

    from unziplora.core.flow import FlowMatching
    from unziplora.methods.single_lora import SingleLoraLoop, SingleLoraSpec
    from unziplora.models.profiles import load_profile
    from unziplora.core.inject import attention_modules
    from unziplora.probe import module_groups, oracle_scorer, probe_block_roles
    from unziplora.toyworld import heldout_images

    pipe = flux_base.load()
    assert module_groups(pipe.transformer) == ["transformer_blocks.0", "transformer_blocks.1",
                                               "single_transformer_blocks.0", "single_transformer_blocks.1"]
    image = heldout_images(1, 64)[0][2]
    loop = SingleLoraLoop(pipe, image, SingleLoraSpec("A sks", rank=2, steps=2, lr=1e-3, resolution=64), "cpu")
    assert isinstance(loop.objective, FlowMatching)
    before = {k: v.clone() for k, v in loop.lora_state().items()}
    loop.train_step()
    state = loop.lora_state()
    loop.release()
    modules = {k.rsplit(".lora_", 1)[0] for k in state}
    assert {"transformer_blocks.0.attn.add_q_proj", "transformer_blocks.1.attn.to_add_out",
            "single_transformer_blocks.1.attn.to_v"} <= modules
    assert any(not torch.equal(before[k], state[k]) for k in state)  # the step trained the LoRA
    assert not getattr(pipe.transformer, "peft_config", None)  # released: the pipeline as it came

    profile, _ = probe_block_roles(flux_base, tmp_path / "probe", images=[image], scorer=oracle_scorer, steps=2,
                                   rank=2, resolution=64, sample=SampleConfig(steps=2, seeds=[0], guidance_scale=3.5),
                                   progress=False)
    assert profile == yaml.safe_load((tmp_path / "probe" / "unziplora_profile.yaml").read_text())
    table = (tmp_path / "probe" / "block_roles.md").read_text()
    assert all(f"| {group} |" in table for group in module_groups(pipe.transformer))
    loaded = load_profile(tmp_path / "probe" / "unziplora_profile.yaml")
    loaded.check_against([name for name, _ in attention_modules(pipe.transformer)])
    assert profile["default"] == {"content": "masked", "style": "masked"}


def test_generate_from_plain_flux_lora_files_draws_what_the_run_draws(flux_base, flux_run, tmp_path):
    """The run's exported LoRA files, given as plain content and style sources with the FLUX base,
    draw the run's own "both" image (merger 1, every column: the export holds what the branch does),
    and one file alone the run's "content" image (an ordinary LoRA in the stock pipeline)."""
    from unziplora.export import export_run
    from unziplora.generate import generate

    files = export_run(flux_run.path, "diffusers", tmp_path / "export")
    prompts = flux_run.manifest.prompts
    settings = dict(steps=2, seeds=[0], guidance_scale=3.5, resolution=64, fused=False)
    from_run = generate("A <c> cat in <s> style", tmp_path / "run", "both", run=flux_run.path, **settings)
    from_files = generate("A <c> cat in <s> style", tmp_path / "files", content_run=files[0], style_run=files[1],
                          base_model=flux_base.source, identifier=prompts.identifier, style_words=prompts.style_words,
                          **settings)
    assert np.abs(pixels([Image.open(from_run[0])]) - pixels([Image.open(from_files[0])])).max() <= 1
    alone = generate("A <c> cat", tmp_path / "alone", "content", run=files[0], base_model=flux_base.source,
                     identifier=prompts.identifier, **settings)
    run_alone = generate("A <c> cat", tmp_path / "run-alone", "content", run=flux_run.path, **settings)
    assert np.abs(pixels([Image.open(alone[0])]) - pixels([Image.open(run_alone[0])])).max() <= 1


def test_plain_lora_files_that_do_not_fit_the_flux_base_are_one_line_errors(flux_base, flux_run, tmp_path,
                                                                            monkeypatch):
    """Checked from the file's header before the model loads: a UNet LoRA, a FLUX LoRA of other
    widths, a kohya-layout FLUX file whose fused module does not fit."""
    from safetensors.torch import save_file

    from unziplora.errors import UnZipLoRAError
    from unziplora.export import export_run
    from unziplora.generate import generate
    from unziplora.run.folder import load_safetensors

    monkeypatch.setattr(BaseModel, "load", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    unet = tmp_path / "unet.safetensors"
    q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{q}.lora_A.weight": torch.zeros(2, 32), f"{q}.lora_B.weight": torch.zeros(32, 2)}, str(unet))
    state = load_safetensors(export_run(flux_run.path, "diffusers", tmp_path / "d")[0])
    key = next(k for k in sorted(state) if k.endswith("to_q.lora_A.weight"))
    wider = tmp_path / "wider.safetensors"
    save_file({**state, key: torch.zeros(state[key].shape[0], state[key].shape[1] + 8)}, str(wider))
    kohya = load_safetensors(export_run(flux_run.path, "kohya", tmp_path / "k")[0])
    up = "lora_unet_single_blocks_0_linear1.lora_up.weight"
    taller = tmp_path / "taller.safetensors"
    save_file({**kohya, up: torch.zeros(kohya[up].shape[0] + 4, kohya[up].shape[1])}, str(taller))
    for file, message in ((unet, r"is a LoRA for a UNet model .*, and .* is a FLUX.1 transformer; pass the base model"),
                          (wider, rf"{key.removesuffix('.lora_A.weight')} has shape .* here but .* in .*another base"),
                          (taller, r"lora_unet_single_blocks_0_linear1 has shape .* here but .* another base")):
        with pytest.raises(UnZipLoRAError, match=message) as caught:
            generate("A cat", tmp_path / "out", "content", run=file, base_model=flux_base.source, steps=2)
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
