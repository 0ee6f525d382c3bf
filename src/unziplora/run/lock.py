"""Who is writing a work folder: a lock that names its holder (pid, host, start) and dies with it.

Every folder unziplora writes into before renaming it into place (a run's OUT.partial/, the
hidden .OUT.partial-XXXX of export, merge and generate) holds `.lock` while its writer lives.
Liveness is the kernel's: the writer holds an flock on that file, which the kernel releases
when the process ends, however it ends (SIGKILL included) and whatever pid it had. The file's
text (pid, host, start time) is only for messages. On a file system without flock the pid is
checked instead (on this host; another host's pid is presumed alive). A lock no live process
holds is stale and taken over.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnZipLoRAError

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Holder:
    """The process a lock names."""

    pid: int | None
    host: str
    since: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        return f"{who} on {self.host or 'an unknown host'}" + (f", since {self.since}" if self.since else "")


class RunInProgress(UnZipLoRAError):
    """The folder is being written by a live process (`holder`)."""

    def __init__(self, message: str, holder: Holder | None = None):
        super().__init__(message)
        self.holder = holder


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (EPERM: it exists, owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid = data.get("pid")
        return Holder(pid if isinstance(pid, int) else None, str(data.get("host", "")), str(data.get("since", "")))
    except (ValueError, AttributeError, OSError):  # being written this instant, or damaged
        return Holder(None, "", "")


def _try_flock(fd: int) -> bool | None:
    """True: we now hold it; False: a live process does; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return None
        raise


def _alive_without_flock(holder: Holder) -> bool:
    if holder.host != socket.gethostname():
        return bool(holder.host)  # another machine's pid cannot be checked: presume it alive
    return holder.pid is not None and holder.pid != os.getpid() and pid_alive(holder.pid)


class WorkLock:
    """The lock of one work folder: `holder()` to look, `acquire()` / `release()` to hold it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def holder(self) -> Holder | None:
        """The live process holding this folder's lock, or None (no lock, or a stale one)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)  # flock needs no write access: another user's lock is read too
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            holder = _read_holder(fd)
            got = _try_flock(fd)
            if got is None:
                return holder if _alive_without_flock(holder) else None
            return None if got else holder  # closing the descriptor below drops a lock we just took
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Hold the lock (a stale one is taken over); RunInProgress when a live process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                got = _try_flock(fd)
                if got is None and _alive_without_flock(_read_holder(fd)):
                    got = False
                if got is False:
                    holder = _read_holder(fd)
                    raise RunInProgress(f"{self.folder} is being written by a run in progress ({holder.describe()}); "
                                        "wait for it to finish or stop it, or choose another --out", holder)
                try:  # the file may have been removed by its previous holder between our open and flock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        self._fd = fd
        since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
        except OSError:  # a full disk: let go; the caller reports it
            self.release()
            raise

    def moved_to(self, folder: Path) -> None:
        """The folder was renamed (the lock file moved with it, still held)."""
        self.folder = Path(folder)

    def release(self) -> None:
        """Remove the lock file, then let go (in that order: nobody can take a file that is gone)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
