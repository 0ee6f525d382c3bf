"""Output folders written all or nothing, by one live writer at a time, with nothing left behind.

Every command writes into a work folder beside its output and renames it into place when done:
export, merge, generate and the baselines into a hidden `.OUT.partial-XXXX/`, decompose into
`OUT.partial/` (a stable name, so an interrupted run can be resumed). A work folder holds a lock
naming its writer (runlock.py): a live writer's folder is never removed, not even by --force;
the leftovers of a writer that died (a hidden work folder, a `.NAME.tmp-PID-THREAD-RAND` file, a swapped-out
`.OUT.old-PID-...`) are removed by the next command writing to the same place. An output never
replaces an input or a run folder's parts, and --force replaces only what the same command wrote
(check_output). A full disk is one
error line, with whatever was half-written removed; folders a failed command created are removed
again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from ..errors import UnZipLoRAError
from .lock import LOCK_FILE, RunInProgress, WorkLock, pid_alive

# A hidden work folder with no lock file is another writer's only in the instant between its
# mkdtemp and its lock (or an older unziplora's): removed only once older than this.
UNLOCKED_GRACE_S = 60.0
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_OLD = re.compile(r"\.old-(\d+)(?:-[0-9a-f]+-[0-9a-f]+)?$")


def unique_suffix() -> str:
    """PID-THREAD-RANDOM: a temp name no other process, thread (two web sessions) or retry shares;
    the pid comes first so the leftovers of a dead writer can be told from a live one's."""
    return f"{os.getpid()}-{threading.get_ident():x}-{uuid.uuid4().hex[:8]}"


def refuse_existing(out_dir: Path, force: bool) -> None:
    """One clear error when `out_dir` holds something and `force` is off (checked before any work)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise UnZipLoRAError(f"{out_dir} already exists and is not empty; choose another --out or pass --force")


# ----- what an output may replace ---------------------------------------------------------------
# What each command writes into its output folder. --force replaces a folder holding nothing else
# (a previous output of the same command); a folder of another kind (a run, a folder of runs, a
# model) is never replaced. A run folder is recognised by its manifest.
OUTPUT_FILES = {
    "generate": ("*.png", "generation.json"),
    "export": ("*.safetensors",),
    "merge": ("pytorch_lora_weights.safetensors",),
}
RUN_OUTPUT_FOLDERS = ("samples", "export", "eval")  # where generate, export and batch --eval write in a run
_IGNORED = (".DS_Store",)


def _resolved(path) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, TypeError):
        return None


def check_output(out: str | Path, inputs, force: bool, kind: str) -> Path:
    """Refuse, before any work, an `out` that would destroy an input or something `kind` did not write.

    `inputs` are the paths the command reads (run folders, LoRA files, images, a base-model folder;
    None and non-paths are skipped). An `out` equal to an input, holding one, or inside one is refused
    whatever the flags (inside a run folder only its samples/, export/ and eval/ may be written). An existing
    non-empty `out` needs `force`, and `force` replaces only a previous output of `kind`.
    """
    out = Path(out)
    where = _resolved(out)
    for given in inputs:
        if not isinstance(given, (str, os.PathLike)) or str(given) in ("", "embedded"):
            continue
        source = _resolved(given)
        if where is None or source is None or not source.exists():
            continue
        if where == source:
            raise UnZipLoRAError(f"--out {out} is the input {given}; writing there would destroy it: "
                                 "choose another --out")
        if source.is_relative_to(where):
            raise UnZipLoRAError(f"--out {out} holds the input {given}; writing there would destroy it: "
                                 "choose another --out")
        if where.is_relative_to(source) and not _in_run_outputs(where, source):
            raise UnZipLoRAError(f"--out {out} is inside the input {given}; choose an --out outside it"
                                 + (" (or under its samples/, export/ or eval/)" if _is_run(source) else ""))
    if where is not None:  # a run folder's own parts are never an output, an input of this command or not
        for run in where.parents:
            if _is_run(run) and not _in_run_outputs(where, run):
                raise UnZipLoRAError(f"--out {out} is inside the run folder {run}; only its samples/, export/ and eval/ "
                                     "take outputs: choose another --out")
    refuse_existing(out, force)
    if force:
        check_replaceable(out, kind)
    return out


def _is_run(folder: Path) -> bool:
    from .manifest import MANIFEST_FILE

    return (folder / MANIFEST_FILE).is_file()


def _in_run_outputs(where: Path, source: Path) -> bool:
    parts = where.relative_to(source).parts
    return _is_run(source) and bool(parts) and parts[0] in RUN_OUTPUT_FOLDERS


def check_replaceable(out: Path, kind: str) -> None:
    """One line unless `out` is absent, empty, or a previous output of `kind` (what --force may replace)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise UnZipLoRAError(f"{out} is a file, not a previous `unziplora {kind}` output; --force replaces only "
                             "that: choose another --out")
    if kind == "decompose":
        if _is_run(out) or not any(out.iterdir()):
            return
        raise UnZipLoRAError(f"{out} is not a run folder (no manifest.json); --force replaces only a previous run: "
                             "choose another --out")
    if _is_run(out):
        raise UnZipLoRAError(f"{out} is a run folder; `unziplora {kind} --force` never replaces a run: "
                             "choose another --out")
    patterns = OUTPUT_FILES[kind]
    for entry in out.iterdir():
        if entry.name in _IGNORED:
            continue
        if entry.is_symlink() or not entry.is_file() or not any(entry.match(p) for p in patterns):
            raise UnZipLoRAError(f"{out} holds {entry.name}, which `unziplora {kind}` does not write; --force replaces "
                                 f"only a previous {kind} output: choose another --out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the permissions the user's umask allows,
    as a plain open() would: temp folders (mkdtemp, 0700) and some writers' files (0600) would
    otherwise keep their private modes after the rename."""
    mask = _umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


# ----- a full disk ------------------------------------------------------------------------------
def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, from Python (OSError) or from safetensors' Rust writer (SafetensorError)."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    if isinstance(exc, SafetensorError):
        text = str(exc)
        return any(f"os error {code})" in text for code in _DISK_FULL) or "No space left" in text
    return False


def disk_full_error(where) -> UnZipLoRAError:
    return UnZipLoRAError(f"the disk is full while writing {where}; nothing half-written was kept: "
                          "free some space and run again")


@contextlib.contextmanager
def writing_errors(where: Path):
    """A full disk or a read-only file system becomes one line (the callers remove what they wrote)."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(getattr(exc, "filename", None) or where) from None
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            raise UnZipLoRAError(f"{exc.filename or where} is on a read-only file system; choose another --out") from None
        raise


# ----- leftovers --------------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove, beside `out_dir`, the hidden work folders whose writer died (any output's: a new
    `generate` writes a new samples/MODE-NNN, so the crashed one had another name) and the
    `.OUT.old-PID` a dead process swapped out. Returns what was removed."""
    parent, removed = out_dir.parent, []
    if not parent.is_dir():
        return removed
    for path in parent.glob(".*.partial-*"):
        if not path.is_dir() or path.is_symlink():
            continue
        lock = WorkLock(path)
        if lock.path.exists():
            stale = lock.holder() is None
        else:
            own = path.name.startswith(f".{out_dir.name}.partial-")
            stale = own and time.time() - path.stat().st_mtime > UNLOCKED_GRACE_S
        if stale:
            _remove(path)
            removed.append(path)
    for path in parent.glob(f".{glob_escape(out_dir.name)}.old-*"):
        match = _OLD.search(path.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def clean_temp_files(folder: Path) -> None:
    """Remove the `.NAME.tmp-PID` files a killed writer left in a folder this process now holds."""
    for path in folder.rglob(".*.tmp-*"):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (deepest last), so a failure can remove them."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_if_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _move_into_place(work: Path, out_dir: Path, force: bool, kind: str | None = None) -> None:
    """Rename `work` to `out_dir`; an existing `out_dir` (allowed by --force, if `kind` wrote it) is
    swapped out first."""
    apply_umask(work)
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UnZipLoRAError(f"{out_dir} appeared while this command ran and was left as it is; "
                             "run again with another --out, or with --force to replace it")
    if kind is not None:  # what appeared meanwhile is checked as what was there at the start
        check_replaceable(out_dir, kind)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{unique_suffix()}")
        out_dir.rename(old)
        work.rename(out_dir)
        _remove(old)
    else:
        work.rename(out_dir)


# ----- the two kinds of work folder -------------------------------------------------------------
@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, force: bool = False, kind: str | None = None):
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir` in one rename.

    An existing non-empty `out_dir` is refused unless `force` (and, with `kind`, unless it is a
    previous output of that command: check_replaceable); on any error the temporary folder (and any
    parent folder made for it) is removed and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    if force and kind is not None:
        check_replaceable(out_dir, kind)
    created: list[Path] = []
    tmp = lock = None
    try:
        with writing_errors(out_dir):
            created = _make_parents(out_dir.parent)
            clean_leftovers(out_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
            lock = WorkLock(tmp)
            lock.acquire()
            yield tmp
            _move_into_place(tmp, out_dir, force, kind)
            lock.moved_to(out_dir)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_if_empty(created)
        raise
    finally:
        if lock is not None:
            lock.release()


def _holds_work(work: Path) -> bool:
    """Whether an OUT.partial holds anything but its lock and temp files."""
    return any(p.name != LOCK_FILE and not re.fullmatch(r"\..+\.tmp-.+", p.name) for p in work.iterdir())


def partial_dir(out_dir: Path) -> Path:
    """Where a run is written while it trains: OUT.partial, a stable name so it can be resumed."""
    return out_dir.with_name(f"{out_dir.name}.partial")


def _live_run_error(work: Path, holder) -> RunInProgress:
    who = f" ({holder.describe()})" if holder else ""
    return RunInProgress(f"{work} is being written by a run in progress{who}; --force never removes a live run: "
                         "wait for it to finish or stop it, or choose another --out", holder)


@contextlib.contextmanager
def resumable_output_dir(out_dir: str | Path, force: bool, resume: bool, keep: Callable[[Path], bool]):
    """Like atomic_output_dir, but the work folder is OUT.partial, locked by this process.

    A live run's OUT.partial is refused, whatever the flags. An interrupted one is continued with
    `resume`, discarded with `force`, refused otherwise. On failure a folder this call started
    (fresh, or over with `force`) is removed unless `keep(work)` says it holds something to
    resume from; a resumed one is never removed: a command that refuses deletes nothing.
    """
    out_dir = Path(out_dir)
    work = partial_dir(out_dir)
    lock = WorkLock(work)
    holder = lock.holder()
    if holder is not None:
        raise _live_run_error(work, holder)
    refuse_existing(out_dir, force)
    if work.is_dir() and not work.is_symlink() and not _holds_work(work) and (
            lock.path.exists() or time.time() - work.stat().st_mtime > UNLOCKED_GRACE_S):
        _remove(work)  # a writer killed before it wrote anything (only its lock): nothing to resume or refuse
    existed = work.exists()
    if existed and not resume and not force:
        raise UnZipLoRAError(f"{work} holds an interrupted run (no process is writing it); pass --resume to "
                             "continue it or --force to start over")
    if resume and not existed:
        raise UnZipLoRAError(f"nothing to resume: {work} does not exist; run without --resume")
    if existed and not work.is_dir():
        raise UnZipLoRAError(f"{work} is a file, not an interrupted run; move it away")
    created: list[Path] = []
    with writing_errors(out_dir):
        created = _make_parents(work.parent)
        work.mkdir(exist_ok=True)
        try:
            lock.acquire()  # a run that started since we looked is refused here
        except RunInProgress as exc:
            raise _live_run_error(work, exc.holder) from None
    started_over = not resume
    try:
        with writing_errors(out_dir):
            if existed and not resume:  # --force: start over, under our lock
                for path in work.iterdir():
                    if path.name != lock.path.name:
                        _remove(path)
            clean_temp_files(work)
            clean_leftovers(out_dir)
            yield work
            try:
                _move_into_place(work, out_dir, force, "decompose")
            except UnZipLoRAError:  # OUT appeared meanwhile: keep the finished run where it is
                raise UnZipLoRAError(f"{out_dir} appeared while this run trained and was left as it is; the finished "
                                     f"run is kept in {work}: pass --resume --force to put it in its place") from None
            lock.moved_to(out_dir)
    except BaseException:
        if started_over and not keep(work):
            shutil.rmtree(work, ignore_errors=True)
            _remove_if_empty(created)
        raise
    finally:
        lock.release()
