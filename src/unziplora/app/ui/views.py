"""The page's HTML fragments: the message line, the progress bar, the queue and a job's notes.
Plain strings from a job's state, so they are tested without a browser."""

from __future__ import annotations

import html

from .jobs import Job, JobState, Worker


def message(text: str, error: bool = False) -> str:
    if not text:
        return ""
    kind = "uz-error" if error else "uz-info"
    prefix = "error: " if error else ""
    return f'<div class="uz-msg {kind}" role="{"alert" if error else "status"}">{prefix}{html.escape(text)}</div>'


def progress_html(job: Job | None) -> str:
    """The bar: title, step of total, loss, time left; or the job's end."""
    if job is None:
        return '<div class="uz-progress" data-state="idle"><div class="uz-text">no training yet</div></div>'
    p = job.progress
    done, total = (p.step, p.total) if p else (0, 0)
    share = 100.0 if job.state is JobState.DONE else (100.0 * done / total if total else 0.0)
    parts = [html.escape(job.title), job.state.value]
    if total:
        parts.append(f"step {done}/{total}")
    if p and p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if job.state is JobState.RUNNING and total and done >= total:  # trained; the run folder is being written
        parts.append("finishing: writing the LoRAs and the preview")
    elif job.state is JobState.RUNNING and p and p.seconds_left is not None:
        parts.append(f"{p.seconds_left:.0f} s left")
    return (f'<div class="uz-progress" data-state="{job.state.value}" data-step="{done}" data-total="{total}">'
            f'<div class="uz-bar"><div class="uz-fill" style="width:{share:.1f}%"></div></div>'
            f'<div class="uz-text">{" · ".join(parts)}</div></div>')


def job_label(job: Job) -> str:
    return f"#{job.id} {job.title}"


def queue_html(worker: Worker) -> str:
    """The running job and the waiting ones, each with its id (what a cancel names)."""
    running, waiting = worker.running, worker.waiting()
    if running is None and not waiting:
        return '<div class="uz-queue">worker idle</div>'
    text = f"running: {html.escape(job_label(running))}" if running else "starting"
    if waiting:
        text += f" · waiting ({len(waiting)}): " + ", ".join(html.escape(job_label(j)) for j in waiting)
    return f'<div class="uz-queue">{text}</div>'


def notes_html(job: Job | None) -> str:
    if job is None or not job.notes:
        return ""
    return '<div class="uz-notes">' + "<br>".join(html.escape(n) for n in job.notes[-8:]) + "</div>"
