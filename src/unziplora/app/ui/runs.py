"""The runs folder as the page sees it: safe run names, the list of runs, interrupted runs to resume.

Everything the page reads or writes is a path this module resolved under the runs folder: a run
name is one plain folder name (letters, digits, `.`, `_`, `-`), never a path, and what it names
must resolve inside the folder (a link pointing out of it is refused). A run the page starts keeps
its input image and settings in `RUNS/.unziplora-ui/NAME/` while it trains, so an interrupted run
can be resumed from the page, after a restart too; that folder is removed when the run ends.
Creating it is how a run name is claimed (`claim`, create-exclusive), before anything else is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...run.checkpoint import CHECKPOINT_DIR, RECORD_FILE
from ...errors import UnZipLoRAError
from ...run.manifest import MANIFEST_FILE
from ...run.outputs import partial_dir
from ...run.folder import RunFolder, write_text_atomic

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
        while (self.root / name).exists() or partial_dir(self.root / name).exists() or self.pending(name).exists():
            n += 1
            name = f"{stem}-{n}"
        return name

    def claim(self, name: str) -> None:
        """Make run `name` this request's, atomically: its kept-settings folder is created exclusively
        (os.mkdir) before anything is written, so two sessions asking for one name at the same moment
        get it once; a name a run or an interrupted run already has is refused too."""
        out = self.path(name)
        folder = self.pending(name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder)
        except FileExistsError:
            raise UnZipLoRAError(f"a run named {name!r} is being started or exists already in {self.root}; "
                                 "choose another name") from None
        if out.exists() or partial_dir(out).exists():
            folder.rmdir()
            raise UnZipLoRAError(f"a run named {name!r} exists already in {self.root}; choose another name")

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
            if not NAME.fullmatch(folder.name):
                continue
            if (partial_dir(self.root / folder.name) / CHECKPOINT_DIR / RECORD_FILE).is_file():
                names.append(folder.name)
        return names

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

    def forget(self, name: str) -> None:
        """Drop the kept image and settings (the run finished, or left nothing to resume)."""
        shutil.rmtree(self.pending(name), ignore_errors=True)


def _thumbnail(run: Path) -> Path | None:
    for name in ("thumbnail.png", "input.png"):
        if (run / name).is_file() and (run / name).resolve().is_relative_to(run.resolve()):
            return run / name
    return None
