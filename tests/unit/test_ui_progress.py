"""The page's progress bar says what happens after the last step instead of "0 s left"."""

import pytest

pytest.importorskip("gradio")

from unziplora.app.ui.jobs import Job, JobState  # noqa: E402
from unziplora.app.ui.views import progress_html  # noqa: E402
from unziplora.core.callbacks import Progress  # noqa: E402


def job_at(step: int, total: int, state: JobState = JobState.RUNNING) -> Job:
    return Job(1, "decompose", "decompose cat", lambda job: None, "cat", state=state,
               progress=Progress(step, total, 0.1234, 0.0 if step == total else 12.0))


def test_after_the_last_step_the_bar_says_the_run_is_being_written():
    text = progress_html(job_at(150, 150))
    assert "finishing: writing the LoRAs and the preview" in text and "s left" not in text


def test_during_training_it_says_the_time_left_and_when_done_neither():
    assert "12 s left" in progress_html(job_at(75, 150)) and "finishing" not in progress_html(job_at(75, 150))
    done = progress_html(job_at(150, 150, JobState.DONE))
    assert "finishing" not in done and "s left" not in done
