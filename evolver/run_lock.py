"""One writer per run directory: an exclusive flock on `<run>/lock`, held by `run`/`resume` for their whole life.

The kernel drops a flock when its holder dies (kill -9 included), so a lock is never stale; the file keeps the
holder's pid, start time and command for the message a second writer gets. Readers (`status`, `show`, `export`)
never take it: they only ask whether someone holds it, to tell a run that is really running from one whose
process died while its state still says `running`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from .errors import UserInputError

LOCK_FILE = "lock"
READER_RETRIES = 25  # 0.5 s: a reader holds its shared lock only while it asks


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or fail with exit 2 naming the holder; nothing else is written before this."""
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise UserInputError(f"{folder}: expected a run directory (a folder, or a path that does not exist "
                                 "yet), found a file")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(fd):
            holder = _describe(_read(fd))
            os.close(fd)
            raise UserInputError(f"{self.path.parent}: expected a run directory no other evolver is writing, found "
                                 f"it in use by {holder}; wait for it to finish or stop it (Ctrl-C, kill), then "
                                 "`evolver resume`") from None
        info = {"pid": os.getpid(), "started_at": time.time(), "command": " ".join(sys.argv[:6])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (its content is only informative)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(fd: int) -> bool:
    """The exclusive lock, allowing for a reader's shared lock of a moment (`held` takes one to ask)."""
    for _ in range(READER_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.02)
    return False


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (ValueError, OSError):
        return {}


def _describe(info: dict) -> str:
    pid = info.get("pid", "?")
    started = info.get("started_at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"
    return f"evolver pid {pid} (started {when}: {info.get('command', '?')})"


def held(run_dir: str | Path) -> bool:
    """Whether a live process holds the run's lock (read-only: works on a read-only run directory too)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False
