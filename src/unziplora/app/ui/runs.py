"""The runs folder as the page sees it: safe run names, the list of runs, interrupted runs to resume.

Everything the page reads or writes is a path this module resolved under the runs folder: a run
name is one plain folder name (letters, digits, `.`, `_`, `-`), never a path, and what it names
must resolve inside the folder (a link pointing out of it is refused). A run the page starts keeps
its input image and settings in `RUNS/.unziplora-ui/NAME/` while it trains, so an interrupted run
can be resumed from the page, after a restart too; that folder is removed when the run ends.
Creating it is how a run name is claimed (`claim`, create-exclusive), before anything else is written;
its lock (run/lock.py) says the claim is alive while the job waits or runs.

Nothing left over blocks a name: a `NAME.partial/` no process writes is resumable from the page
(`interrupted`), listed to be deleted (`leftovers`, `discard`), or, holding nothing (a process
that ended while it loaded the model), removed with its kept settings (`clean`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...run.checkpoint import CHECKPOINT_DIR, RECORD_FILE
from ...errors import UnZipLoRAError
from ...run.manifest import MANIFEST_FILE
from ...run.outputs import UNLOCKED_GRACE_S, partial_dir
from ...run.folder import RunFolder, write_text_atomic
from ...run.lock import LOCK_FILE, WorkLock

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
PENDING_DIR = ".unziplora-ui"  # hidden: never listed as a run
REQUEST_FILE = "request.json"


@dataclass(frozen=True)
class RunInfo:
    """One finished run, for the runs list."""

    name: str
    subject: str
    style: str
    method: str
    created: str  # ISO date and time (UTC), as the manifest has it
    steps: int
    thumbnail: Path | None

    @property
    def caption(self) -> str:
        return f"{self.name}: {self.subject} / {self.style} · {self.method} · {self.created[:16].replace('T', ' ')}"


class RunsFolder:
    """The one folder the page keeps its runs in."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._claims: dict[str, WorkLock] = {}  # the names this process claimed, held while their job lives
        # Claims and cleaning in this process take turns: a lock held by this process reads as no
        # holder (run/lock.py), so cleaning must never see a claim between its mkdir and _claims.
        self._turns = threading.RLock()

    # ----- names and paths ---------------------------------------------------------------------
    def path(self, name: str | None) -> Path:
        """The folder of run `name`; anything but a plain name inside the runs folder is refused."""
        name = (name or "").strip()
        if not NAME.fullmatch(name) or name.endswith(".partial") or ".." in name:
            raise UnZipLoRAError(f"run name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                                 "(at most 80, no path)")
        path = self.root / name
        if path.resolve().parent != self.root:
            raise UnZipLoRAError(f"run {name!r} leads out of the runs folder {self.root}; refusing to use it")
        return path

    def open(self, name: str | None) -> RunFolder:
        return RunFolder.open(self.path(name))

    def free_name(self, subject: str, style: str) -> str:
        """A new run name from the subject and style: 'cat-watercolor', else 'cat-watercolor-2', ..."""
        stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{subject}-{style}").strip("-").lower()[:60] or "run"
        name, n = stem, 1
        while True:
            self.clean(name)
            if not any(p.exists() for p in (self.root / name, partial_dir(self.root / name), self.pending(name))):
                return name
            n += 1
            name = f"{stem}-{n}"

    def claim(self, name: str) -> None:
        """Make run `name` this request's, atomically: its kept-settings folder is created exclusively
        (os.mkdir) before anything is written, so two sessions asking for one name at the same moment
        get it once, and locked while its job lives; a name a run or an interrupted run already has
        is refused too (what a dead process left holding nothing is removed first)."""
        with self._turns:
            self._claim(name)

    def _claim(self, name: str) -> None:
        out = self.path(name)
        self.clean(name)
        folder = self.pending(name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder)
        except FileExistsError:
            raise UnZipLoRAError(f"a run named {name!r} is being started or exists already in {self.root}; "
                                 "choose another name") from None
        lock = WorkLock(folder)
        try:
            lock.acquire()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._claims[name] = lock
        if out.exists() or partial_dir(out).exists():
            self.forget(name)
            where = ("an interrupted run of that name is kept: resume or delete it under \"Resume an interrupted "
                     "run\", or " if partial_dir(out).exists() else "")
            raise UnZipLoRAError(f"a run named {name!r} exists already in {self.root}; {where}choose another name")

    def claim_free_name(self, subject: str, style: str) -> str:
        """A new run name from the subject and style (free_name), claimed; the next one if another
        session took it meanwhile."""
        for _ in range(1000):
            name = self.free_name(subject, style)
            try:
                self.claim(name)
                return name
            except UnZipLoRAError:
                continue
        raise UnZipLoRAError(f"no free run name for {subject!r} / {style!r} in {self.root}; type a name")

    # ----- listing -----------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """The finished runs, newest first; a damaged folder is left out, not an error."""
        found = []
        for child in self.root.iterdir():
            if not NAME.fullmatch(child.name) or not (child / MANIFEST_FILE).is_file():
                continue
            try:
                run = self.open(child.name)
                m = run.manifest
                found.append(RunInfo(child.name, m.prompts.subject, m.prompts.style_words, m.method.value,
                                     m.created, m.steps, _thumbnail(run.path)))
            except (UnZipLoRAError, KeyError, TypeError, ValueError):
                continue
        return sorted(found, key=lambda r: (r.created, r.name), reverse=True)

    def names(self) -> list[str]:
        return [r.name for r in self.runs()]

    def interrupted(self) -> list[str]:
        """Runs the page started that stopped with a checkpoint (cancelled, killed): resumable."""
        names = []
        pending = self.root / PENDING_DIR
        for folder in sorted(pending.iterdir()) if pending.is_dir() else []:
            if NAME.fullmatch(folder.name) and self._resumable(folder.name):
                names.append(folder.name)
        return names

    def leftovers(self) -> list[str]:
        """Interrupted runs the page cannot resume (started by the command line, or damaged) that no
        process is writing: each blocks its name until it is resumed from the command line or deleted."""
        self.clean()
        resumable = set(self.interrupted())
        found = []
        for work in sorted(self.root.glob("*.partial")):
            name = work.name[:-len(".partial")]
            if NAME.fullmatch(name) and name not in resumable and work.is_dir() and not work.is_symlink() \
                    and WorkLock(work).holder() is None:
                found.append(name)
        return found

    def discard(self, name: str) -> None:
        """Delete an interrupted run that no process is writing: its OUT.partial and what the page kept."""
        work = partial_dir(self.path(name))
        if not work.is_dir() or work.is_symlink():
            raise UnZipLoRAError(f"there is no interrupted run {name!r} in {self.root}")
        holder = WorkLock(work).holder()
        if holder is not None:
            raise UnZipLoRAError(f"run {name!r} is being written ({holder.describe()}); cancel it first")
        if self._claims.get(name) is not None or WorkLock(self.pending(name)).holder() is not None:
            raise UnZipLoRAError(f"run {name!r} is queued or being resumed; cancel it first")
        shutil.rmtree(work)
        shutil.rmtree(self.pending(name), ignore_errors=True)

    def clean(self, name: str | None = None) -> None:
        """Remove what a process that ended without cleaning up left holding nothing to resume: an
        OUT.partial with only its lock and temp files, kept settings whose claim no process holds.
        A live writer's or claim's folders are never touched; one with no lock is given a grace period
        (another process may be between creating it and locking it)."""
        with self._turns:
            self._clean(name)

    def _clean(self, name: str | None) -> None:
        if name is not None:
            names = [self.path(name).name]
        else:
            pending = self.root / PENDING_DIR
            names = {p.name for p in pending.iterdir()} if pending.is_dir() else set()
            names |= {p.name[:-len(".partial")] for p in self.root.glob("*.partial")}
            names = sorted(n for n in names if NAME.fullmatch(n) and not n.endswith(".partial"))
        for each in names:
            work = partial_dir(self.root / each)
            if _abandoned(work) and not any(p.name != LOCK_FILE and ".tmp-" not in p.name for p in work.iterdir()):
                shutil.rmtree(work, ignore_errors=True)
            kept = self.root / PENDING_DIR / each
            if each not in self._claims and _abandoned(kept) and not self._resumable(each):
                shutil.rmtree(kept, ignore_errors=True)

    def _resumable(self, name: str) -> bool:
        return (partial_dir(self.root / name) / CHECKPOINT_DIR / RECORD_FILE).is_file()

    # ----- what a page-started run keeps while it trains --------------------------------------
    def pending(self, name: str) -> Path:
        return self.root / PENDING_DIR / self.path(name).name

    def keep_request(self, name: str, upload: Path, request: dict) -> Path:
        """Copy the uploaded image and the settings beside the run (for resuming); returns the image copy."""
        folder = self.pending(name)
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"input{upload.suffix.lower()[:8] or '.img'}"
        if upload.resolve() != image.resolve():
            shutil.copyfile(upload, image)
        write_text_atomic(folder / REQUEST_FILE, json.dumps({**request, "image": image.name}, indent=2))
        return image

    def request(self, name: str) -> tuple[Path, dict]:
        """The kept image and settings of an interrupted run."""
        folder = self.pending(name)
        try:
            request = json.loads((folder / REQUEST_FILE).read_text())
            image = folder / Path(request["image"]).name
        except (OSError, ValueError, KeyError, TypeError):
            raise UnZipLoRAError(f"the page kept no settings for run {name!r}; resume it with the command line "
                                 "(unziplora decompose ... --resume)") from None
        return image, request

    def release(self, name: str) -> None:
        """The job of run `name` ended: its claim is no longer held (what it kept stays, to resume)."""
        with self._turns:
            lock = self._claims.pop(name, None)
            if lock is not None:
                lock.release()

    def forget(self, name: str) -> None:
        """Drop the kept image and settings (the run finished, or left nothing to resume)."""
        self.release(name)
        shutil.rmtree(self.pending(name), ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """A folder no live process holds: its lock is stale, or it has none and is past the grace period."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    lock = WorkLock(folder)
    if lock.holder() is not None:
        return False
    try:
        return lock.path.exists() or time.time() - folder.stat().st_mtime > UNLOCKED_GRACE_S
    except OSError:
        return False


def _thumbnail(run: Path) -> Path | None:
    for name in ("thumbnail.png", "input.png"):
        if (run / name).is_file() and (run / name).resolve().is_relative_to(run.resolve()):
            return run / name
    return None
