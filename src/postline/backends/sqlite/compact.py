"""Giving disk space back: what the writer thread does when nothing is queued.

SQLite reuses the pages a drained spool frees but never shrinks its files by itself, so a
spool that once held 10 GB would hold on to 10 GB. ``spool.db`` is created with
``auto_vacuum = INCREMENTAL`` (schema.py; an older, small file is converted at open) and the
writer thread calls :class:`Upkeep` between batches, at most once a second:

* **Incremental vacuum** once the free pages reach 25 % of the file or 64 MB:
  ``PRAGMA incremental_vacuum`` in steps of 1 MB, each its own transaction followed by a
  passive checkpoint (the checkpoint truncates the database file), until the free list is
  gone; it yields to queued writes between steps. A step moves live pages from the end of
  the file into free ones, which costs WAL space of at most its own size: small steps keep
  that bounded even on a nearly full disk. (Accept admission counts free pages as room,
  space.py, so a spool at its floor does not need the file to shrink to take mail again.)
* **WAL truncation** when the writer has been idle a whole second and the ``-wal`` file is
  not empty: ``wal_checkpoint(TRUNCATE)``. Under load ``journal_size_limit`` (schema.py)
  bounds the file instead.
* **The reserve** (space.py) is allocated again once there is room for it.

A file made before auto-vacuum was turned on is converted by the owner at open with one
``VACUUM`` when it holds under 128 MB of live pages; a bigger one keeps working, without
shrinking, and says so in the log (drain it and restart to convert it).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable

from postline.backends.sqlite.schema import BUSY_TIMEOUT_MS, INCREMENTAL
from postline.backends.sqlite.space import PAGES, SpaceGuard

log = logging.getLogger("postline.spool")

VACUUM_STEP = 256  # pages per incremental_vacuum transaction (1 MB of 4 KB pages)
VACUUM_SHARE = 0.25  # of the file's pages free: start compacting
VACUUM_BYTES = 64 * 1024 * 1024  # or this many bytes free
TRUNCATE_WAIT_MS = 100  # busy timeout of the idle WAL truncation
CONVERT_MAX_BYTES = 128 * 1024 * 1024  # live pages VACUUMed at open to turn auto_vacuum on


class SpoolKeeper:
    """The owner's :class:`~postline.backends.sqlite.writer.Keeper`: its hooks run in the
    writer thread."""

    def __init__(self, path: str, space: SpaceGuard) -> None:
        self._wal = path + "-wal"
        self._space = space
        self._compacting = False  # started: go on until the free list is gone
        self.vacuumed_pages = 0

    def committed(self, conn: sqlite3.Connection) -> None:
        self._space.observe(conn)

    def full(self) -> bool:
        return self._space.release_reserve()

    def upkeep(self, conn: sqlite3.Connection, idle: bool, waiting: Callable[[], bool]) -> None:
        self._space.restore_reserve()
        if self._wants_vacuum(conn):
            self._vacuum(conn, waiting)
        if idle and not waiting() and _size(self._wal) > 0:
            _truncate_wal(conn)
        self._space.restore_reserve()  # compaction may have made room for it

    def _wants_vacuum(self, conn: sqlite3.Connection) -> bool:
        pages, free, page_size = _pages(conn)
        if free < VACUUM_STEP // 4:
            self._compacting = False
        elif not self._compacting:
            self._compacting = free >= pages * VACUUM_SHARE or free * page_size >= VACUUM_BYTES
        return self._compacting

    def _vacuum(self, conn: sqlite3.Connection, waiting: Callable[[], bool]) -> None:
        while not waiting():
            before = _pages(conn)[1]
            # executescript steps the pragma to completion; execute() would free one page
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP})")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            after = _pages(conn)[1]
            self.vacuumed_pages += before - after
            if after < VACUUM_STEP // 4 or after >= before:
                self._compacting = False
                return


def convert(conn: sqlite3.Connection, free: int) -> None:
    """Turn on incremental auto-vacuum in a file made without it. One VACUUM copies the
    live pages (through the WAL, and a temporary copy in memory): only when they are few
    and the disk has room for three times them."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
        return
    pages, freelist, page_size = _pages(conn)
    live = (pages - freelist) * page_size
    if live > CONVERT_MAX_BYTES or 3 * live > free:
        log.warning(
            "spool.db has no incremental auto-vacuum: it will not shrink when it drains;"
            f" it is converted at a start when it holds under {CONVERT_MAX_BYTES >> 20} MB",
            extra={"live_bytes": live},
        )
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")
    log.info("spool.db converted to incremental auto-vacuum", extra={"live_bytes": live})


def _pages(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(pages in the file, pages on the free list, page size)."""
    pages, free, page_size = conn.execute(PAGES).fetchone()
    return int(pages), int(free), int(page_size)


def _truncate_wal(conn: sqlite3.Connection) -> None:
    """A reader in the middle of a read makes TRUNCATE wait: not longer than a moment,
    the writer thread has better things to do; the next idle second tries again."""
    conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
