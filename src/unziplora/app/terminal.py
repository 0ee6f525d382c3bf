"""What a command does with its terminal: SIGTERM stops it as Ctrl-C does, and --verbose shows the
package's log lines above the progress bar for that command only."""

from __future__ import annotations

import contextlib
import logging
import sys


def sigterm_as_ctrl_c():
    """SIGTERM (what Slurm, Kubernetes and systemd send) stops a command as Ctrl-C does: training
    saves its checkpoint between steps, generate keeps its finished images, work folders are cleaned."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()

    def stop(signum, frame):
        raise KeyboardInterrupt("stopped by SIGTERM")

    @contextlib.contextmanager
    def handled():
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return handled()


class AboveTheBar(logging.Handler):
    """Log lines written above the progress bar (tqdm.write), not through it."""

    def emit(self, record):
        from tqdm.auto import tqdm

        tqdm.write(f"detail: {self.format(record)}", file=sys.stderr)


@contextlib.contextmanager
def show_details():
    """The package's INFO log lines (core/train.py: cone-score ties) on stderr, for this command only
    (main may run again in the same process: the API's callers, tests)."""
    logger, handler = logging.getLogger("unziplora"), AboveTheBar()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
