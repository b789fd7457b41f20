"""Disk space of the embedded spool: refuse new mail early, keep room to finish what is in flight.

A full disk once deadlocked delivery: the free-space check (statvfs at most once a second)
let a burst of accepts fill the disk to 0 bytes, and then the writes that finish work (a
settle deletes a delivery and appends an event) failed too, so nothing could drain. Two
mechanisms (the third, giving freed pages back, is compact.py):

* **Admission per accept batch.** Room is what statvfs reports, plus the pages free
  inside ``spool.db`` (reused before the file grows), minus the pages a checkpoint has yet
  to add to the file (the database's size in the WAL beyond the file's size); the writer
  thread reads both page counts after each commit (:meth:`SpaceGuard.observe`). Every
  batch is charged its estimated cost (:func:`batch_cost`: payload twice, in the WAL and
  in the database, plus row and index overhead) against the last look; when that would
  leave less than ``min_free_bytes``, statvfs is read again at once and the batch refused
  if the fresh room, minus the batches still being written, is short. Far from the floor
  that is a few additions per batch (statvfs once a second, to see other writers); near
  it, one statvfs per batch, so no burst overshoots.
* **The reserve.** ``<data_dir>/spool.reserve``: ``reserve_bytes`` allocated on disk. Only
  the writes that finish work in flight (settle, lease, release, expire) may use it: when
  they hit SQLITE_FULL the writer thread deletes the file and runs them again. While it is
  missing, accepts are refused; it is allocated again when ``min_free_bytes`` plus its size
  are free. Because the space is really held, not only counted, it also protects delivery
  from another process filling the disk, or from an estimate that was too low.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path

from postline.spool.interface import AcceptBatch, SpoolUnavailable

log = logging.getLogger("postline.spool")

RESERVE_FILE = "spool.reserve"
SPACE_CHECK_INTERVAL = 1.0  # seconds: the longest that other writers go unseen
ROW_COST = 160  # bytes of a row with its index entries, besides its blobs
_FILL = 1 << 20  # bytes per write when the reserve must be written out
PAGES = "SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()"


def batch_cost(batch: AcceptBatch) -> int:
    """Estimated bytes one accept batch adds to the disk: WAL and database both. A body
    streamed from a file counts its ``size`` (``body`` is empty then)."""
    n = batch.body_size + ROW_COST
    for m in batch.messages:
        n += len(m.personalization) + ROW_COST * (1 + len(m.recipients))
    for e in batch.events:
        n += len(e.data) + ROW_COST
    return 2 * n


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SpaceGuard:
    """Accept admission (event loop thread); page counts and the reserve (writer thread).

    The threads share ``_pages``, ``reserve_ready`` and ``_checked``: whole-attribute writes;
    ``_pending`` and ``_charged`` change under ``_lock`` (``written`` may come from the
    writer thread: SqliteSpool.accept_soon).
    """

    def __init__(self, data_dir: str, min_free: int, reserve: int) -> None:
        self.data_dir = data_dir
        self._db = Path(data_dir) / "spool.db"
        self._pages = (0, 0, 0)  # spool.db: (pages, free pages, page size) at the last commit
        self._floor = min_free
        self._reserve_size = reserve
        self._reserve = Path(data_dir) / RESERVE_FILE
        self._free = 0  # at the last statvfs
        self._charged = 0  # estimated bytes of batches written since then
        self._pending = 0  # batches admitted and still being written
        self._checked = -math.inf
        self._error: str | None = None
        self.reserve_ready = reserve == 0
        self._lock = threading.Lock()

    # -- accept admission (event loop) ----------------------------------------------------

    def admit(self, cost: int) -> None:
        """Charge a batch of ``cost`` bytes or refuse it (SpoolUnavailable)."""
        now = time.monotonic()
        with self._lock:
            estimate = self._free - self._charged - self._pending - cost
            if estimate < self._floor or now - self._checked >= SPACE_CHECK_INTERVAL:
                self._refresh(now)
            problem = self._problem(cost)
            if problem is not None:
                raise SpoolUnavailable(problem)
            self._pending += cost

    def written(self, cost: int) -> None:
        """The batch is written (or failed: counting it anyway errs on the safe side)."""
        with self._lock:
            self._pending -= cost
            self._charged += cost

    def problem(self) -> str | None:
        """Why new mail is refused now, or None: for health checks (statvfs <= 1/s)."""
        now = time.monotonic()
        if now - self._checked >= SPACE_CHECK_INTERVAL:
            self._refresh(now)
        return self._problem(0)

    def observe(self, conn: sqlite3.Connection) -> None:
        """Writer thread, after a commit: the page counts of the file as it now is."""
        with contextlib.suppress(sqlite3.Error):  # a missed look only makes the next one older
            self._pages = conn.execute(PAGES).fetchone()

    def _refresh(self, now: float) -> None:
        self._checked = now
        pages, free_pages, page_size = self._pages
        try:
            fs_free = free_bytes(self.data_dir)
        except OSError as exc:
            self._error = f"cannot stat the data directory: {exc.strerror}"
            return
        unwritten = max(0, pages * page_size - _size(self._db))
        self._error = None
        self._free = fs_free + free_pages * page_size - unwritten
        self._charged = 0

    def _problem(self, cost: int) -> str | None:
        if self._error is not None:
            return self._error
        if not self.reserve_ready:  # never allocated, or given to deliveries in flight
            return (
                "disk full: no room in the data directory for spool.reserve_bytes above"
                " spool.min_free_bytes; free some space"
            )
        if self._free - self._charged - self._pending - cost < self._floor:
            return (
                "disk full: free space in the data directory is below spool.min_free_bytes;"
                " free some space"
            )
        return None

    # -- the reserve (writer thread, and at open) -----------------------------------------

    def restore_reserve(self) -> None:
        """Allocate the reserve if it is missing and there is room for it above the floor."""
        if self.reserve_ready:
            return
        if self._reserve.exists() and self._reserve.stat().st_blocks * 512 >= self._reserve_size:
            self.reserve_ready = True  # left by the previous run
            return
        try:
            room = free_bytes(self.data_dir) >= self._floor + self._reserve_size
        except OSError:
            return
        if room and _allocate(self._reserve, self._reserve_size):
            self.reserve_ready = True
            self._checked = -math.inf  # free space just dropped by the reserve's size
            log.info("spool reserve allocated", extra={"bytes": self._reserve_size})

    def release_reserve(self) -> bool:
        """Give the reserve to the spool (SQLITE_FULL on work in flight); False if none."""
        try:
            self._reserve.unlink()
        except FileNotFoundError:
            return False
        finally:
            self.reserve_ready = self._reserve_size == 0
            self._checked = -math.inf
        log.warning(
            "disk full: spool reserve released to finish deliveries in flight; new mail is"
            " refused until space is back",
            extra={"bytes": self._reserve_size},
        )
        return True

    def drop_reserve_file(self) -> None:
        """``reserve_bytes = 0``: a reserve left by an earlier configuration is freed."""
        if self._reserve_size == 0:
            self._reserve.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _allocate(path: Path, size: int) -> bool:
    """Write ``path`` with ``size`` bytes really allocated (not sparse, not compressible)."""
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            if os.fstat(fd).st_blocks * 512 < size:  # emulated fallocate on a compressing fs
                chunk = os.urandom(_FILL)
                for offset in range(0, size, _FILL):
                    os.pwrite(fd, chunk[: size - offset], offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("spool reserve not allocated", extra={"reason": exc.strerror})
        return False
    return True
