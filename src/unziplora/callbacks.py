"""Training callbacks: progress bar and preview images, kept out of the loop."""

from __future__ import annotations

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

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_start(self, trainer) -> None:
        self.bar = tqdm(
            total=trainer.config.train.steps, initial=trainer.step, desc="decompose", unit="step",
            disable=not self.enabled, dynamic_ncols=True,
        )

    def on_step(self, trainer, log) -> None:
        postfix = {"loss": f"{log.loss:.4f}"}
        if log.refresh:
            from .branch import Branch

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
        if self.every and done % self.every == 0 and done < trainer.config.train.steps:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.render(trainer, self.folder / f"step_{done:05d}.png")
