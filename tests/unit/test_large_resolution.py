"""A size far above the base model's own is refused unless asked for, saying what a step costs; Ctrl-C
answers within a second even while a step is slow."""

import os
import signal
import time

import pytest

from unziplora.core.train import fit
from unziplora.errors import UnZipLoRAError
from unziplora.models.base import BaseModel
from unziplora.models.loading import check_native_size


def test_far_above_the_models_own_size_is_refused_unless_allowed():
    base = BaseModel.resolve("embedded")  # 64 px
    with pytest.raises(UnZipLoRAError, match=r"4096 is 64x .* 4,096x a step at 64 px.*expect at least [\d.,]+ (min|h|days) "
                                             r"per training step here .*--allow-large-resolution"):
        check_native_size(4096, base)
    assert "4,096x" in check_native_size(4096, base, allow_large=True)
    assert check_native_size(128, base) is None and check_native_size(32, base) is None


def test_the_expected_step_time_is_a_floor_that_grows_faster_than_the_pixels():
    """The estimate counts the denoiser's operations at the asked size (self-attention grows with the
    square of the pixels) and no real step beats it on this machine."""
    import torch

    from unziplora.models.step_cost import forward_flops, matmul_flops_per_s, step_seconds_floor

    base = BaseModel.resolve("embedded")
    at_64, at_128, at_1024 = (forward_flops(base, size) for size in (64, 128, 1024))
    assert 3.5 <= at_128 / at_64 and at_1024 / at_64 > (1024 / 64) ** 2 * 2  # beyond the pixel ratio
    pipe = base.load()
    latent = torch.randn(1, pipe.unet.config.in_channels, 16, 16)  # 64 px through its 4x VAE
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(1, pipe.unet.config.projection_class_embeddings_input_dim
                                        - 6 * pipe.unet.config.addition_time_embed_dim), "time_ids": torch.zeros(1, 6)}
    with torch.no_grad():
        pipe.unet(latent, torch.tensor([10]), text, added_cond_kwargs=added)  # warm-up
        t0 = time.perf_counter()
        pipe.unet(latent, torch.tensor([10]), text, added_cond_kwargs=added)
        real_forward = time.perf_counter() - t0
    assert at_64 / matmul_flops_per_s() < real_forward  # a floor
    seconds, how = step_seconds_floor(base, 64)
    assert seconds > 0 and "FLOP" in how and "CPU" in how


class SlowLoop:
    """A loop whose step `slow_step` sends itself Ctrl-C and then takes `seconds`."""

    def __init__(self, slow_step: int, seconds: float = 20.0):
        self.step, self.total_steps, self.should_stop, self.timings = 0, 5, False, {}
        self.slow_step, self.seconds, self.interrupted_at = slow_step, seconds, None

    def train_step(self):
        if self.step == self.slow_step:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(self.seconds)
        self.step += 1


class Watch:
    def __init__(self):
        self.interrupted_at = None

    def on_start(self, loop): ...
    def on_step(self, loop, log): ...
    def on_end(self, loop): ...

    def on_interrupt(self, loop):
        self.interrupted_at = loop.step


def test_ctrl_c_during_a_slow_first_step_stops_at_once():
    loop, watch, t0 = SlowLoop(slow_step=0), Watch(), time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        fit(loop, [watch])
    assert time.perf_counter() - t0 < 5 and loop.step == 0 and watch.interrupted_at is None  # nothing to save


def test_ctrl_c_after_a_step_says_so_at_once_and_stops_after_the_step(capfd):
    loop, watch = SlowLoop(slow_step=1, seconds=1.0), Watch()
    with pytest.raises(KeyboardInterrupt):
        fit(loop, [watch])
    assert "stopping after this step" in capfd.readouterr().err
    assert watch.interrupted_at == 2  # the slow step finished, the checkpoint callbacks ran
