"""What the page's events do: each handler takes the form's values, calls tasks.py or the runs
folder, and returns what the page shows. No handler waits for training or sampling: those are
queued, and `poll` (a timer, twice a second) streams their progress to the page.

Every UnZipLoRAError becomes one message line on the page, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import html
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from ...names import Mode
from ...errors import UnZipLoRAError
from ...methods import PLUGINS, Method
from .jobs import Job, JobState, Worker
from .views import job_label, message, notes_html, progress_html, queue_html
from .runs import RunsFolder
from .tasks import (
    DecomposeRequest,
    GenerateRequest,
    export_files,
    form_defaults,
    previews_of,
    submit_decompose,
    submit_generate,
    submit_resume,
)

METHOD_LABELS = {m: PLUGINS[m].help for m in Method}
MAX_DECODES = 2  # uploads decoded at once: each can take a few hundred MB while it is read


def _shown_error(exc: UnZipLoRAError, upload: str | Path | None = None) -> str:
    """The command line's message; an upload is named by its file name, not the page's temp path."""
    text = str(exc)
    if upload:
        text = text.replace(str(upload), Path(upload).name)
    return message(text, error=True)


def guarded(outputs: int, upload: int | None = None):
    """A handler whose first output is the message line: an UnZipLoRAError becomes that line and
    its other `outputs - 1` outputs stay as they are. `upload`: the index of the argument that is
    an uploaded file, named in the message by its file name."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, *args):
            try:
                return handler(self, *args)
            except UnZipLoRAError as exc:
                shown = _shown_error(exc, args[upload] if upload is not None else None)
                return (shown, *[gr.skip()] * (outputs - 1))

        return wrapper

    return decorate


@dataclass
class Page:
    """The state one page process shares between its visitors: the runs folder, the base model, the worker."""

    runs: RunsFolder
    base_model: str
    worker: Worker
    max_upload_bytes: int
    sessions: dict = field(default_factory=dict)  # session token (kept by the browser) -> its job ids
    _decodes: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_DECODES),
                                                 repr=False)
    _sessions_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ----- decompose ---------------------------------------------------------------------------------
    def on_upload(self, upload):
        """A preview of the image as training will read it (the command line's checks); an image
        that fails them is removed from the upload box and its message shown.
        Outputs: msg, preview, upload."""
        from ...core.data import load_image

        if not upload:
            return gr.skip(), None, gr.skip()
        try:
            with self.decoding():
                return "", load_image(upload), gr.skip()
        except UnZipLoRAError as exc:
            return _shown_error(exc, upload), None, None

    @contextlib.contextmanager
    def decoding(self):
        """At most MAX_DECODES uploads are read at once, whoever sends them; another is refused at once."""
        if not self._decodes.acquire(blocking=False):
            raise UnZipLoRAError(f"{MAX_DECODES} images are being read already; wait a moment and drop it again")
        try:
            yield
        finally:
            self._decodes.release()

    def on_method(self, method):
        """The form's numbers become the chosen method's defaults (B-LoRA trains with its reference's)."""
        d = form_defaults(self.base_model, method or Method.UNZIPLORA.value)
        return d["steps"], d["rank"], d["resolution"], d["seed"]

    @guarded(3, upload=0)
    def on_decompose(self, upload, subject, style, name, method, steps, rank, resolution, seed, previews, state):
        method = method or Method.UNZIPLORA.value
        given = {"steps": _int(steps), "rank": _int(rank), "resolution": _int(resolution), "seed": _int(seed)}
        # a number left at its default is not "given": the manifest keeps where each setting came from
        defaults = form_defaults(self.base_model, method)
        given = {k: (None if v == defaults[k] else v) for k, v in given.items()}
        request = DecomposeRequest(subject or "", style or "", method, previews=_int(previews) or 0, **given)
        with self.decoding():  # submitting reads the image again, with the command line's checks
            job = submit_decompose(self.worker, self.runs, self.base_model, upload, name or "", request,
                                   self.max_upload_bytes)
        state = self._with_job(state, "job", job)
        return message(f"queued: {job.title} ({job.progress.total} steps)"), state, progress_html(job)

    @guarded(2)
    def on_resume(self, name, state):
        if name in self.runs.leftovers():
            raise UnZipLoRAError(f"run {name!r} was not started from this page, so the page kept no image to resume "
                                 "it with: resume it with the command line (unziplora decompose ... --resume) or "
                                 "delete it here")
        job = submit_resume(self.worker, self.runs, self.base_model, name or "")
        return message(f"queued: {job.title}"), self._with_job(state, "job", job)

    @guarded(2)
    def on_discard(self, name):
        """Delete an interrupted run (its NAME.partial and what the page kept), freeing its name."""
        if not name:
            raise UnZipLoRAError("pick an interrupted run first")
        self.runs.discard(name)
        return message(f"{name}: interrupted run deleted; its name is free"), self.resume_update()

    # ----- the session's jobs: the browser keeps the session's token, so a reloaded page can still cancel them
    def _with_job(self, state, kind: str, job: Job) -> dict:
        """The state with `job` recorded as the session's latest of `kind` ("job": decompose, "gen": generate)."""
        state = dict(state or {})
        if not state.get("session"):
            state = self.on_reload(state)
        with self._sessions_lock:
            record = self.sessions.setdefault(state["session"], {"jobs": []})
            record[kind] = job.id
            record["jobs"].append(job.id)
        return state

    def _record(self, state) -> dict:
        """The server's record of the session's jobs (empty for a token an earlier process gave)."""
        with self._sessions_lock:
            record = self.sessions.get((state or {}).get("session") or "", {"jobs": []})
            return {**record, "jobs": list(record["jobs"])}

    def session_jobs(self, state) -> list[Job]:
        return [j for j in (self.worker.get(i) for i in self._record(state)["jobs"]) if j is not None]

    def on_reload(self, state) -> dict:
        """A page (re)opened with what its browser kept: its session token (a new one if none), and
        everything drawn again."""
        state = {k: v for k, v in (state or {}).items() if k != "shown"}
        if not isinstance(state.get("session"), str) or not state["session"]:
            state["session"] = secrets.token_hex(16)
        return state

    def cancel_choices(self, state):
        """The session's jobs that can still be cancelled, for the job list beside Cancel."""
        return gr.update(choices=[job_label(j) for j in self.session_jobs(state) if not j.state.finished])

    @guarded(1)
    def on_cancel(self, state, chosen=None):
        """Cancel the job named in the list beside Cancel (one of this session's), else the session's latest
        decompose."""
        mine = {j.id: j for j in self.session_jobs(state)}
        if chosen:
            try:
                job_id = int(str(chosen).split()[0].lstrip("#"))
            except ValueError:
                raise UnZipLoRAError(f"{chosen!r} names no job; pick one from the list") from None
            if job_id not in mine:
                raise UnZipLoRAError(f"job #{job_id} is not one of this page's jobs; pick one from the list")
            return (message(self.worker.cancel(job_id)),)
        return (message(self.worker.cancel(self._record(state).get("job"))),)

    @guarded(1)
    def on_cancel_generate(self, state):
        return (message(self.worker.cancel(self._record(state).get("gen"))),)

    # ----- a run's result ------------------------------------------------------------------------------
    @guarded(8)
    def on_select_run(self, name):
        """The result of run `name`: grid, loss curve, summary (mask fractions), a prompt to start from."""
        if not name:
            return gr.skip(), None, None, "", [], gr.skip(), gr.skip(), gr.skip()
        run = self.runs.open(name)
        m = run.manifest
        loss = run.path / "loss.png"
        lines = [run.summary()]
        if m.mask_fraction is not None:
            f = m.mask_fraction
            lines.append(f"masks: the content branch holds {f['content']:.1%} of the columns, "
                         f"the style branch {f['style']:.1%}")
        summary = "<pre class='uz-summary'>" + html.escape("\n".join(lines)) + "</pre>"
        prompt = f"A <c> {m.prompts.subject} in <s> style"
        sample = m.config.sample
        return (gr.skip(), run.path / "preview.png" if (run.path / "preview.png").is_file() else None,
                loss if loss.is_file() else None, summary, previews_of(self.runs, name), prompt,
                sample.steps, sample.guidance_scale)

    def run_choices(self):
        names = self.runs.names()
        return names, self.runs.interrupted()

    # ----- generate --------------------------------------------------------------------------------------
    @guarded(2)
    def on_generate(self, mode, run, content_run, style_run, prompt, seeds, steps, guidance, num_images, state):
        request = GenerateRequest(mode, prompt or "", run, content_run, style_run, seeds or "", _int(steps),
                                  _float(guidance), _int(num_images) or 1)
        job = submit_generate(self.worker, self.runs, request)
        return message(f"queued: {job.title}"), self._with_job(state, "gen", job)

    # ----- download ----------------------------------------------------------------------------------------
    @guarded(2)
    def on_download(self, run, fmt):
        if not run:
            raise UnZipLoRAError("pick a run first (the Run list at the top)")
        files = export_files(self.runs, run, fmt)
        return message(f"{run}: content and style LoRAs in {fmt} format, and the model card"), [str(f) for f in files]

    # ----- the runs list ---------------------------------------------------------------------------------------
    def runs_gallery(self):
        return [(str(r.thumbnail), r.caption) for r in self.runs.runs() if r.thumbnail]

    def runs_table(self):
        return [[r.name, r.subject, r.style, r.method, r.steps, r.created[:16].replace("T", " ")]
                for r in self.runs.runs()]

    def on_table_select(self, evt: gr.SelectData):
        names = self.runs.names()
        row = evt.index[0] if evt is not None and isinstance(evt.index, (list, tuple)) else None
        if row is None or row >= len(names):
            return gr.skip(), gr.skip()
        return gr.update(choices=names, value=names[row]), gr.Tabs(selected="result")

    def on_runs_select(self, evt: gr.SelectData):
        shown = [r.name for r in self.runs.runs() if r.thumbnail]
        if evt is None or evt.index is None or evt.index >= len(shown):
            return gr.skip(), gr.skip()
        return gr.update(choices=self.runs.names(), value=shown[evt.index]), gr.Tabs(selected="result")

    def resume_update(self):
        """The interrupted runs: those the page can resume, then those it can only delete (each named so)."""
        interrupted = self.runs.interrupted()
        choices = [*interrupted, *[(f"{n} (started elsewhere: delete it, or resume with the command line)", n)
                                   for n in self.runs.leftovers()]]
        return gr.update(choices=choices, value=choices[0] if interrupted else None)

    def refresh(self, current):
        names = self.runs.names()
        value = current if current in names else (names[0] if names else None)
        return (gr.update(choices=names, value=value), gr.update(choices=names), gr.update(choices=names),
                self.resume_update(), self.runs_gallery(), self.runs_table())

    # ----- the timer -------------------------------------------------------------------------------------------
    def poll(self, state, current):
        """Stream the page's jobs: progress, previews, notes, queue; on an end, its result or message.

        Outputs: state, msg, progress, previews, notes, queue, run, content run, style run, gallery,
        runs gallery, runs table, resume, tabs. Unchanged outputs are skipped, so images are not sent again
        every tick.
        """
        state = dict(state or {})
        record = self._record(state)  # job ids live on the server: a poll that overlaps a click loses none
        shown = dict(state.get("shown") or {})
        out = {key: gr.skip() for key in ("msg", "run", "content", "style", "gallery", "runs", "table", "resume",
                                           "tabs")}
        job = self.worker.get(record.get("job"))
        view = {"progress": progress_html(job), "notes": notes_html(job), "queue": queue_html(self.worker),
                "previews": _previews_key(self.runs, job)}
        for key in ("progress", "notes", "queue", "previews"):
            if shown.get(key) == view[key]:
                out[key] = gr.skip()
            else:
                shown[key] = view[key]
                out[key] = view[key] if key != "previews" else [str(p) for p in view[key]]
        if job is not None and job.state is JobState.RUNNING and shown.get("started-job") != job.id:
            shown["started-job"] = job.id  # the message said "queued" until now
            steps = f" ({job.progress.total} steps)" if job.progress is not None else ""
            out["msg"] = message(f"running: {job.title}{steps}")
        gen = self.worker.get(record.get("gen"))
        if gen is not None and not gen.state.finished and gen.progress is not None:  # denoising steps, streamed
            text = f"{gen.title}: denoising step {gen.progress.step} of {gen.progress.total}"
            if shown.get("gen-progress") != text:
                shown["gen-progress"] = text
                out["msg"] = message(text)
        for kind in ("job", "gen"):
            job = self.worker.get(record.get(kind))
            if job is None or not job.state.finished or shown.get(f"ended-{kind}") == job.id:
                continue
            shown[f"ended-{kind}"] = job.id
            if job.state is JobState.CANCELLED and job.target in self.runs.interrupted():
                step = job.progress.step if job.progress else 0
                out["msg"] = message(f"{job.title}: cancelled after step {step}; its checkpoint is kept: continue it "
                                     "under \"Resume an interrupted run\"")
            elif job.state is not JobState.DONE:
                out["msg"] = message(f"{job.title}: {job.error}", error=job.state is JobState.FAILED)
            elif kind == "job":
                names, _ = self.run_choices()
                out["run"] = gr.update(choices=names, value=job.result)
                out["content"] = out["style"] = gr.update(choices=names)
                out["tabs"] = gr.Tabs(selected="result")
                out["msg"] = message(f"{job.title}: done")
            else:
                paths = list(job.result)
                out["gallery"] = [str(p) for p in paths]
                out["msg"] = message(f"{job.title}: {len(paths)} image(s) in {paths[0].parent}" if paths else "no images")
            if kind == "job":
                out["runs"], out["table"] = self.runs_gallery(), self.runs_table()
                out["resume"] = self.resume_update()
        state["shown"] = shown
        return (state, out["msg"], out["progress"], out["previews"], out["notes"], out["queue"], out["run"],
                out["content"], out["style"], out["gallery"], out["runs"], out["table"], out["resume"], out["tabs"])


def _previews_key(runs: RunsFolder, job: Job | None) -> list[Path]:
    if job is None or job.target is None:
        return []
    try:
        return previews_of(runs, job.target)
    except UnZipLoRAError:
        return []


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    if float(value) != int(float(value)):
        raise UnZipLoRAError(f"{value} is not a whole number")
    return int(float(value))


def _float(value) -> float | None:
    return None if value is None or value == "" else float(value)


def mode_choices() -> list[tuple[str, str]]:
    labels = {Mode.CONTENT: "content alone", Mode.STYLE: "style alone", Mode.BOTH: "both (this run)",
              Mode.CROSS: "across runs: A's subject in B's style"}
    return [(labels[m], m.value) for m in Mode]
