"""One node per data directory: an exclusive lock held for the life of ``postline serve``.

Two nodes on one ``data_dir`` both recover the spool and deliver the same deliveries (a
second ``serve`` once delivered 893 of 3,000 recipients twice before it failed to bind its
port). So the node locks ``<data_dir>/lock`` with flock(2) before it opens anything else and
writes its pid there. The kernel drops the lock when the process ends, however it ends
(kill -9 included): there is never a stale lock to clean up, and the pid in the file is only
read to name the holder in the error.

Only ``serve`` takes the lock. Commands that run beside a live node (``keys``, status and
queue commands) must not: they use SQLite's own locking like any other reader or writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = "lock"
PID_WAIT = 1.0  # seconds to wait for a holder that has just locked to write its pid


class DataDirBusy(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"another node ({who}) is running on {data_dir}; stop it first or use another data_dir"
        )
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """The held lock; :meth:`release` (or the end of the process) lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: str) -> DataDirLock:
        """Lock ``data_dir`` (created if needed) or raise :class:`DataDirBusy` at once."""
        path = Path(data_dir) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_CREAT without O_TRUNC: a refused opener must not wipe the holder's pid.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(data_dir, _holder_pid(path)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the pid of a stopped node would mislead a reader
        os.close(fd)  # closing the last descriptor drops the flock


def _holder_pid(path: Path) -> int | None:
    """The pid the holder wrote; it may be a moment late (lock first, then write)."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
