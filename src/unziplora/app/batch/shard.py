"""Which rows this process runs: accelerate's process index and count, and an optional --shard i/n.

A batch is data-parallel over images, not over one image's training: each process decomposes
its rows one after another, whole. Row r belongs to shard (r mod n); under `accelerate launch`
with P processes, the user's shard i/n is split again, so process p of shard i runs the rows of
global shard i*P + p out of n*P. Every row thus belongs to exactly one process of one launch.
The launcher (accelerate, torchrun, Slurm) starts the processes; nothing here schedules them.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from ...errors import UnZipLoRAError

# How long a process that finished its rows waits for the others (their rows may take hours):
# a barrier that timed out would stop them mid-run.
BARRIER_TIMEOUT = dt.timedelta(days=30)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the rows at positions index, index + count, index + 2 count, ..."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise UnZipLoRAError(f"--shard {self.index}/{self.count}: the index must lie in 0..{self.count - 1} "
                                 "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-N)")

    def take(self, rows: list) -> list:
        return rows[self.index::self.count]

    def split(self, process_index: int, num_processes: int) -> "Shard":
        """The part of this shard that process `process_index` of `num_processes` runs."""
        return Shard(self.index * num_processes + process_index, self.count * num_processes)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'3/16' -> Shard(3, 16)."""
    index, sep, count = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise UnZipLoRAError(f"--shard {text!r}: write INDEX/COUNT with 0 <= INDEX < COUNT, e.g. --shard 3/16") from None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


class Processes:
    """This process's place among the processes a launcher started (accelerate.PartialState).

    Plain `unziplora batch` is process 0 of 1. Under `accelerate launch` (or torchrun) each GPU's
    process gets its index; it trains on its own local GPU (`torch.cuda.set_device`), so the
    default device `cuda` means that GPU in decompose and generate alike.
    """

    def __init__(self):
        import torch
        from accelerate import PartialState

        # PartialState picks the CPU back end (gloo) only when asked; accelerate launch --cpu says so
        # in ACCELERATE_USE_CPU, and a machine with no GPU can use nothing else.
        self.cpu = _flag("ACCELERATE_USE_CPU")
        cpu = self.cpu or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        self.index, self.count = state.process_index, state.num_processes
        self.local_index = state.local_process_index
        self._group = None
        if torch.cuda.is_available() and not cpu and self.count > 1:
            torch.cuda.set_device(self.local_index)
        if self.count > 1:
            import torch.distributed as dist

            # Its own CPU group with a long timeout: waiting at the end uses no GPU and never times out
            # while another process still trains (the default group's timeout is minutes).
            self._group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait_for_all(self) -> None:
        """Return once every process of the launch has reached this point."""
        if self._group is not None:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def close(self) -> None:
        """Leave the launch's process group (NCCL warns at exit about a group never destroyed)."""
        import torch.distributed as dist

        if self.count > 1 and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def __str__(self) -> str:
        return f"process {self.index} of {self.count}"
