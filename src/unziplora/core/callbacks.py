"""Training callbacks: progress bar, progress reports, stop requests and preview images, kept out of the loop.

A callback sees the loop every method runs (`train.fit`): `Trainer` (train.py) or the single-LoRA
loop of the baselines (methods/single_lora.py); each has `step` (steps done), `total_steps`,
`should_stop` and `history`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


class Callback:
    def on_start(self, trainer) -> None: ...

    def on_step(self, trainer, log) -> None: ...

    def on_end(self, trainer) -> None: ...

    def on_interrupt(self, trainer) -> None:
        """Ctrl-C arrived; called between steps, so the trainer's state is consistent."""


class ProgressBar(Callback):
    """tqdm bar with the loss and, at refresh steps, the share of columns each branch holds."""

    def __init__(self, enabled: bool = True, desc: str = "decompose"):
        self.enabled, self.desc = enabled, desc
        self.bar = None

    def on_start(self, trainer) -> None:
        self.bar = tqdm(
            total=trainer.total_steps, initial=trainer.step, desc=self.desc, unit="step",
            disable=not self.enabled, dynamic_ncols=True,
        )

    def on_step(self, trainer, log) -> None:
        postfix = {"loss": f"{log.loss:.4f}"}
        if log.refresh:
            from ..names import Branch

            postfix["cols"] = "c{:.0%} s{:.0%}".format(
                trainer.lora.mask_fraction(Branch.CONTENT), trainer.lora.mask_fraction(Branch.STYLE)
            )
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def on_end(self, trainer) -> None:
        self.bar.close()


class Previews(Callback):
    """After every `every` steps, write previews/step_NNNNN.png (content | style | together)."""

    def __init__(self, folder: Path, every: int, render):
        self.folder, self.every, self.render = folder, every, render

    def on_step(self, trainer, log) -> None:
        done = log.step + 1  # log.step is the 0-based index of the step just taken
        if self.every and done % self.every == 0 and done < trainer.total_steps:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.render(trainer, self.folder / f"step_{done:05d}.png")


@dataclass(frozen=True)
class Progress:
    """Where training stands after a step: `step` of `total` done, its loss, seconds left (None
    until a step has been timed)."""

    step: int
    total: int
    loss: float | None = None
    seconds_left: float | None = None


class ProgressReport(Callback):
    """Calls `report(Progress)` when training starts and after every step (the web page's bar).

    Time left is the mean time of the steps taken in this call times the steps to go, so a
    resumed run is not credited with the steps of the earlier one.
    """

    def __init__(self, report, total: int):
        self.report, self.total = report, total
        self.first, self.t0 = 0, time.perf_counter()

    def on_start(self, trainer) -> None:
        self.first, self.t0 = trainer.step, time.perf_counter()
        self.report(Progress(trainer.step, self.total))

    def on_step(self, trainer, log) -> None:
        done = log.step + 1
        per_step = (time.perf_counter() - self.t0) / max(1, done - self.first)
        self.report(Progress(done, self.total, log.loss, per_step * (self.total - done)))


class StopOnRequest(Callback):
    """Once `event` (a threading.Event) is set, asks the loop to stop after the current step, as a
    first Ctrl-C does: the loop calls every on_interrupt (the checkpoint is saved) and raises
    KeyboardInterrupt. The web page's Cancel button sets the event."""

    def __init__(self, event):
        self.event = event

    def on_step(self, trainer, log) -> None:
        if self.event.is_set():
            trainer.should_stop = True
