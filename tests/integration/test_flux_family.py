"""FLUX.1 as a base-model family: the tiny pipeline, the family read from the folder, the
prompt-separated transformer (equal to the stock one with zero LoRAs, each branch seeing only its
own prompt's text stream, the streams computed as diffusers' blocks compute text), flow-matching
training, and the built-in profile on the full-size architecture."""

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from unziplora.core.flux import STREAMS_KWARG, BranchStreams, FluxSeparatedAttnProcessor
from unziplora.core.inject import attention_modules, inject_two_branch_lora, remove_two_branch_lora
from unziplora.core.prompts import PromptTriple
from unziplora.core.train import Trainer
from unziplora.models.base import BaseModel
from unziplora.models.profiles import load_profile, resolve_profile, uniform_profile
from unziplora.names import Branch, Role

from ..conftest import tiny_config
from ..pipelines import save_tiny_flux_pipeline

TEXT = 8  # text tokens in the direct transformer calls


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    return BaseModel.resolve(save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "tiny-flux"))


def transformer_inputs(pipe, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=generator),
                encoder_hidden_states=torch.randn(1, TEXT, 32, generator=generator),
                pooled_projections=torch.randn(1, 32, generator=generator), timestep=torch.tensor([0.5]),
                img_ids=pipe._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32), txt_ids=torch.zeros(TEXT, 3),
                guidance=torch.tensor([3.5]))


def streams(content, style) -> dict:
    return {STREAMS_KWARG: BranchStreams(content, style)}


def test_the_tiny_pipeline_generates_offline(flux_base):
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    image = pipe("A monadikos cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 0


def test_the_family_comes_from_the_folder_with_its_profile_and_defaults(flux_base):
    assert flux_base.family.name == "flux" and flux_base.family.denoiser == "transformer"
    assert resolve_profile("auto", flux_base).name == "tiny-flux"  # the folder's own profile
    pipe = flux_base.load()
    states, pooled = flux_base.family.encode(pipe, ["A monadikos cat", "A cat"], "cpu")
    assert states.shape == (2, 512, 32) and pooled.shape == (2, 32)
    assert not torch.allclose(states[0], states[1])


def test_the_family_defaults_layer_and_bf16_on_cuda(flux_base):
    from unziplora.methods import resolve_spec
    from unziplora.models.families import SDXL
    from unziplora.models.loading import pick_dtype

    spec = resolve_spec({"prompts.subject": "cat", "prompts.style": "ink"}, base=flux_base)
    assert spec.config.train.resolution == 1024
    assert spec.config.sample.guidance_scale == 3.5 and spec.config.sample.steps == 28
    assert spec.sources["sample.guidance_scale"] == "model family"
    cuda = torch.device("cuda")
    assert pick_dtype("auto", cuda, flux_base.family) is torch.bfloat16 and pick_dtype("auto", cuda, SDXL) is torch.float16
    assert pick_dtype("auto", torch.device("cpu"), flux_base.family) is torch.float32


def test_with_zero_loras_the_prompt_separated_transformer_is_the_stock_one(flux_base):
    pipe = flux_base.load()
    inputs = transformer_inputs(pipe)
    with torch.no_grad():
        stock = pipe.transformer(**inputs).sample
        lora = inject_two_branch_lora(pipe.transformer, resolve_profile("auto", flux_base), 4, init="zero_b")
        separated = pipe.transformer(**inputs, joint_attention_kwargs=streams(
            torch.randn(1, TEXT, 32), torch.randn(1, TEXT, 32))).sample
    # double blocks: 8 projections each (image and text), single blocks: to_q, to_k, to_v
    assert len(lora.layers) == 2 * 8 + 2 * 3
    assert all(isinstance(attn.processor, FluxSeparatedAttnProcessor) for _, attn in attention_modules(pipe.transformer))
    assert torch.allclose(stock, separated, atol=1e-6)
    remove_two_branch_lora(pipe.transformer)
    with torch.no_grad():
        assert torch.equal(pipe.transformer(**inputs).sample, stock)


def test_the_carried_streams_are_what_the_blocks_make_of_the_same_text(flux_base):
    """Given p's own states as p_c and p_s and zero LoRAs, each carried stream must equal the real text
    stream at every block's input: the hooks advance text exactly as diffusers' blocks do."""
    pipe = flux_base.load()
    inputs = transformer_inputs(pipe)
    inject_two_branch_lora(pipe.transformer, uniform_profile(Role.MASKED, Role.MASKED, "u"), 4, init="zero_b")
    real = []
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    handles = [b.register_forward_pre_hook(lambda m, a, k: real.append(k["encoder_hidden_states"]), with_kwargs=True)
               for b in blocks]
    carried = BranchStreams(inputs["encoder_hidden_states"], inputs["encoder_hidden_states"])
    with torch.no_grad():
        pipe.transformer(**inputs, joint_attention_kwargs={STREAMS_KWARG: carried})
    for handle in handles:
        handle.remove()
    assert len(real) == len(blocks) == 4 and sorted(carried.at) == [0, 1, 2, 3, 4]
    for position, text in enumerate(real):
        for stream in carried.at[position]:
            assert torch.allclose(stream, text, atol=1e-5), position


def test_each_branch_sees_only_its_own_prompts_stream(flux_base):
    pipe = flux_base.load()
    inputs = transformer_inputs(pipe)
    lora = inject_two_branch_lora(pipe.transformer, uniform_profile(Role.ALL, Role.ALL, "all"), 4)
    content, style, other = (torch.randn(1, TEXT, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))

    def run(c, s):
        with torch.no_grad():
            return pipe.transformer(**inputs, joint_attention_kwargs=streams(c, s)).sample

    both = run(content, style)
    assert not torch.allclose(both, run(content, other), atol=1e-5)  # the style branch reads p_s's stream
    lora.set_active({Branch.CONTENT})
    assert torch.allclose(run(content, style), run(content, other), atol=1e-6)  # content alone ignores p_s
    assert not torch.allclose(run(content, style), run(other, style), atol=1e-5)
    lora.set_active({Branch.STYLE})
    assert torch.allclose(run(content, style), run(other, style), atol=1e-6)  # style alone ignores p_c


def test_flow_matching_training_on_flux(flux_base, tiny_image):
    """Trainer on FLUX: finite velocity losses, the LoRA moves, masks grow; gradient checkpointing
    (blocks run again during backward, hooks and all) gives the same step."""
    prompts = PromptTriple("A monadikos cat in sketch style", "A monadikos cat", "A cat in sketch style")

    def trained(checkpointing: bool):
        config = tiny_config(flux_base.source, **{"train.resolution": 64, "train.steps": 3,
                                                  "train.gradient_checkpointing": checkpointing})
        trainer = Trainer.prepare(config, flux_base.load(), tiny_image, prompts, resolve_profile("auto", flux_base),
                                  torch.device("cpu"), torch.float32)
        before = [p.detach().clone() for p in trainer.lora.lora_parameters()]
        logs = [trainer.train_step() for _ in range(3)]
        return trainer, before, logs

    trainer, before, logs = trained(False)
    assert type(trainer.objective).__name__ == "FlowMatching" and trainer.unet is trainer.pipe.transformer
    assert all(np.isfinite(log.loss) for log in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.lora.lora_parameters()))
    assert 0 < trainer.lora.mask_fraction(Branch.CONTENT) < 1
    checkpointed, _, logs_checkpointed = trained(True)
    assert checkpointed.unet.is_gradient_checkpointing
    assert [log.loss for log in logs] == pytest.approx([log.loss for log in logs_checkpointed], rel=1e-4)


def test_the_trained_loras_load_in_stock_diffusers_and_change_its_output(flux_base, tiny_image, tmp_path):
    from unziplora.methods.unziplora import UnZipLoRA

    config = tiny_config(flux_base.source, **{"train.resolution": 64, "train.steps": 2})
    prompts = PromptTriple("A monadikos cat in sketch style", "A monadikos cat", "A cat in sketch style")
    trainer = Trainer.prepare(config, flux_base.load(), tiny_image, prompts, resolve_profile("auto", flux_base),
                              torch.device("cpu"), torch.float32)
    trainer.train_step()
    written = UnZipLoRA().write_weights(trainer, tmp_path)
    assert set(written) == {"content_lora", "style_lora", "state"}
    pipe = FluxPipeline.from_pretrained(flux_base.source)
    settings = dict(height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="np")
    bare = pipe("A monadikos cat", generator=torch.Generator().manual_seed(0), **settings).images[0]
    pipe.load_lora_weights(str(tmp_path / "content_lora"), adapter_name="content")
    assert "content" in pipe.get_list_adapters()["transformer"]
    with_lora = pipe("A monadikos cat", generator=torch.Generator().manual_seed(0), **settings).images[0]
    assert np.isfinite(with_lora).all() and np.abs(with_lora - bare).max() > 1e-4


def test_the_builtin_profile_names_the_full_size_architecture():
    from accelerate import init_empty_weights

    with init_empty_weights():
        transformer = FluxTransformer2DModel()  # FLUX.1's defaults: 19 double, 38 single blocks
    profile = load_profile("flux")
    names = [name for name, _ in attention_modules(transformer)]
    profile.check_against(names)
    assert profile.roles_for("single_transformer_blocks.0.attn")[Branch.CONTENT] is Role.ALL
    assert profile.roles_for("single_transformer_blocks.37.attn")[Branch.STYLE] is Role.ALL
    assert profile.roles_for("transformer_blocks.0.attn") == {Branch.CONTENT: Role.MASKED, Branch.STYLE: Role.MASKED}


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_what_the_processor_copies_from_diffusers_is_still_what_diffusers_has():
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    theirs = _code_lines(inspect.getsource(FluxAttnProcessor.__call__))
    ours = inspect.getsource(FluxSeparatedAttnProcessor.__call__)
    marker = "# Copied from diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__"
    blocks = [part.split("# End of copy")[0] for part in ours.split(marker)[1:]]
    assert len(blocks) == 2 and all(_code_lines(b) for b in blocks)
    for block in blocks:
        lines = _code_lines(block)
        start = theirs.index(lines[0])
        assert theirs[start:start + len(lines)] == lines
