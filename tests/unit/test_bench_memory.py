"""The SDXL memory benchmark's parts, on a tiny SDXL-topology UNet (the full one needs ~14 GB)."""

import torch

from unziplora.bench.memory import RandomLatents, _spawn, parameter_counts, peft_step_fn, sdxl_trainer
from tests.pipelines import tiny_sdxl_components


def _unet():
    return tiny_sdxl_components(seed=0)["unet"]


def test_sdxl_trainer_runs_real_steps_and_counts_parameters():
    unet = _unet()
    base = sum(p.numel() for p in unet.parameters())
    trainer = sdxl_trainer(unet, resolution=32, rank=4, checkpointing=True)
    trainer.train_step()  # refresh step
    before = [p.detach().clone() for p in trainer.lora.lora_parameters()]
    log = trainer.train_step()
    assert torch.isfinite(torch.tensor(log.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.lora.lora_parameters()))

    counts = parameter_counts(trainer)
    lora = sum(p.numel() for p in trainer.lora.lora_parameters())
    assert counts["unet_base"] == base
    assert counts["content_branch"] + counts["style_branch"] == lora
    assert counts["content_branch"] == counts["style_branch"]  # same rank, same targets
    assert counts["optimizer_state"] == 2 * (lora + counts["mergers"])


def test_random_latents_have_sdxl_shapes():
    latents = RandomLatents(256)
    sample, crop = latents.sample(torch.Generator().manual_seed(0))
    assert sample.shape == (1, 4, 32, 32)
    from unziplora.models.families import SDXL

    added = SDXL.added_cond(torch.zeros(1, 8), latents.resolution, 1, "cpu", torch.float32)
    assert added["time_ids"].tolist() == [[256, 256, 0, 0, 256, 256]]  # what the UNet sees beside them


def test_peft_baseline_step_trains_only_lora():
    unet = _unet()
    step = peft_step_fn(unet, 32, 4)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    step()
    changed = [n for n, p in unet.named_parameters() if not torch.equal(before[n], p)]
    assert changed and all("lora" in n for n in changed)


def test_a_child_over_its_memory_limit_is_a_reported_row_not_a_crash():
    row = _spawn("unziplora", 64, False, 4, 1, limit_gb=0.2, threads=1)
    assert row["resolution"] == 64 and "error" in row


def test_fused_adamw_makes_the_same_update_as_torchs_default():
    """The speed path (fused AdamW on CPU) must not change the optimisation itself."""
    from unziplora.core.train import adamw

    torch.manual_seed(0)
    weights = [torch.randn(64, 8), torch.randn(8, 64), torch.rand(64)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for make in (lambda ps: adamw(ps, lr=1e-2, weight_decay=1e-2), lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2)):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = make(params)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        results.append(params)
    assert adamw(results[0]).defaults["fused"]  # CPU parameters take the fused kernel
    for fused, reference, start in zip(*results, weights):
        assert not torch.equal(fused, start)  # it did step
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def test_step_time_ratio_runs_take_turns_and_merge_every_step():
    from unziplora.bench.memory import RATIO_METHODS, interleaved_step_runs

    calls = []

    def fake_spawn(method, resolution, checkpointing, rank, repeats, limit_gb, threads):
        calls.append(method)
        slow = 2.0 if method == "unziplora" else 1.0
        return {"method": method, "step_s": [slow * len(calls)] * repeats, "step_median_s": slow * len(calls)}

    runs, per_round = interleaved_step_runs(128, 4, repeats=2, rounds=2, limit_gb=1, threads=1, spawn=fake_spawn)
    assert calls == list(RATIO_METHODS) * 2  # a, b, c, a, b, c: not a, a, b, b, c, c
    assert runs["unziplora"]["step_s"] == [2.0, 2.0, 8.0, 8.0] and runs["unziplora"]["step_median_s"] == 5.0
    assert per_round == [2 / 2, 2 * 4 / 5]


def test_gpu_bench_rows_cover_both_methods_and_checkpointing_and_ratio_pairs_like_settings():
    from unziplora.bench.cuda import run_cuda

    result = run_cuda(None, resolutions=(32,), rank=4, repeats=2, device="cpu", dtype=torch.float32,
                      unet_factory=_unet)
    keys = [(r["method"], r["gradient_checkpointing"]) for r in result["runs"]]
    assert keys == [("unziplora", True), ("unziplora", False), ("peft", True), ("peft", False)]
    assert all(len(r["step_s"]) == 2 and r["600_steps_min"] == round(600 * r["step_median_s"] / 60, 2)
               for r in result["runs"])
    by_key = {(r["method"], r["gradient_checkpointing"]): r["step_median_s"] for r in result["runs"]}
    assert result["train_step_ratio_sdxl_cuda"]["32px_gc"] == round(by_key["unziplora", True] / by_key["peft", True], 3)
    assert result["parameters"]["content_branch"] > 0


def test_gpu_bench_without_a_gpu_is_one_clear_error():
    import pytest

    from unziplora.bench.cuda import run_cuda
    from unziplora.errors import UnZipLoRAError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UnZipLoRAError, match="--device cpu"):
        run_cuda(None, unet_factory=_unet)


def test_peft_baseline_in_fp16_keeps_lora_in_fp32_and_trains_it():
    unet = _unet()
    step = peft_step_fn(unet, 32, 4, dtype=torch.float16)
    lora = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in lora.items()}
    step()
    step()  # the first fp16 step may be skipped by the loss scaler
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert any(not torch.equal(before[n], p) for n, p in lora.items())
    assert all(p.dtype == torch.float16 for n, p in unet.named_parameters() if n not in lora)



def test_branch_sizes_of_the_full_size_architectures_on_the_meta_device():
    from unziplora.bench.memory import branch_parameters
    from unziplora.models.architectures import sd15_unet_config, sdxl_unet_config

    sdxl = branch_parameters(sdxl_unet_config(), 64)
    assert round(sdxl["unet"] / 1e9, 2) == 2.57 and round(sdxl["branch"] / 1e6, 1) == 92.9  # README's SDXL numbers
    sd15 = branch_parameters(sd15_unet_config(), 64)
    assert round(sd15["unet"] / 1e6, 1) == 859.5
    assert 0 < sd15["branch"] < sdxl["branch"] and sd15["branch"] % 64 == 0


def test_branch_size_of_the_full_size_flux_transformer_on_the_meta_device():
    from unziplora.bench.memory import branch_parameters
    from unziplora.models.architectures import flux_transformer_config

    flux = branch_parameters(flux_transformer_config(), 64)
    assert round(flux["unet"] / 1e9, 2) == 11.90  # FLUX.1-dev's transformer
    # width 3072: eight projections per double-stream block (19), three per single-stream block (38)
    assert flux["branch"] == 64 * (3072 + 3072) * (19 * 8 + 38 * 3)
    assert flux["mergers_per_branch"] == 3072 * (19 * 8 + 38 * 3)
