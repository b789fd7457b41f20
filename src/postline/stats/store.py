"""The rollup store: ``<data_dir>/stats.db`` (SQLite, WAL).

Tables (the whole layout):

* ``rollups (tenant, category, day, metric) → n``: one counter per tenant, UTC day,
  category ("" for the global stats) and SendGrid metric, WITHOUT ROWID so the key is the
  table. A batch of events becomes a few upserts ``n = n + ?`` (metrics.Rollup), never a
  row per event; a query reads at most (days × metrics) rows per category.
* ``firsts (k) → day``: the (tenant, metric, message, recipient) already counted in
  unique_opens / unique_clicks, kept :data:`FIRSTS_DAYS` days after that first open or
  click (then dropped, the first batch of each new day: the table stays bounded by the
  opens of a month; a recipient opening the same message again after that counts as a
  new unique open).
* ``offsets (consumer) → offset``: the last event offset whose counts are in ``rollups``,
  written in the same transaction as the counts, so a crash anywhere leaves both or
  neither, and ``resume`` restarts after exactly what was counted (nothing counted twice).

One writer connection used only from its own thread, one reader connection only from its
own: WAL readers never wait for the writer, and neither blocks the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from postline.events.consumer import Batch
from postline.stats.metrics import First, Key, Rollup, fold

T = TypeVar("T")
FILE = "stats.db"
FIRSTS_DAYS = 35  # how long an open/click is remembered for unique_opens/unique_clicks

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollups (
    tenant TEXT NOT NULL, category TEXT NOT NULL, day INTEGER NOT NULL,
    metric TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (tenant, category, day, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS firsts (k INTEGER PRIMARY KEY, day INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS firsts_day ON firsts (day);
CREATE TABLE IF NOT EXISTS offsets (consumer TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""
UPSERT = (
    "INSERT INTO rollups (tenant, category, day, metric, n) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant, category, day, metric) DO UPDATE SET n = n + excluded.n"
)
FIRST = "INSERT OR IGNORE INTO firsts (k, day) VALUES (?, ?)"
SEEN = "SELECT k FROM firsts WHERE k IN ({})"
SEEN_CHUNK = 500  # keys per IN (...), under SQLite's bound on parameters
SET_OFFSET = (
    "INSERT INTO offsets (consumer, offset) VALUES (?, ?)"
    " ON CONFLICT (consumer) DO UPDATE SET offset = excluded.offset"
)
GET_OFFSET = "SELECT offset FROM offsets WHERE consumer = ?"

# (category, day, metric, n) rows of a query
Row = tuple[str, int, str, int]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # rebuilt from the log if a power loss eats it
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class StatsStore:
    """The rollups of one node; every call runs on the store's own threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="stats-write")
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="stats-read")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self.rows_written = 0  # rollup upserts since start (rows touched)
        self._firsts_cutoff = -(2**62)  # firsts with day < this are gone

    @classmethod
    async def open(cls, data_dir: Path) -> StatsStore:
        store = cls(data_dir / FILE)
        await store._write(store._open_writer)
        await store._read(store._open_reader)
        return store

    def _open_writer(self) -> None:
        self._writer = _connect(self.path)
        self._writer.executescript(SCHEMA)

    def _open_reader(self) -> None:
        self._reader = _connect(self.path)

    async def _write(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, fn)

    async def _read(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn)

    async def offset(self, consumer: str) -> int | None:
        def get() -> int | None:
            row = self._wconn().execute(GET_OFFSET, (consumer,)).fetchone()
            return None if row is None else int(row[0])

        return await self._write(get)

    async def add_events(self, consumer: str, events: Batch) -> Rollup:
        """Fold ``events`` and add them with their last offset in one transaction. The fold
        runs on the writer thread too: 5,000 events are ~20 ms of Python that the event
        loop (and with it the mail path) does not wait for."""

        def run() -> Rollup:
            rollup = fold(rec for _, rec in events)
            self._apply(consumer, rollup, events[-1][0])
            return rollup

        return await self._write(run)

    async def apply(self, consumer: str, rollup: Rollup, offset: int) -> int:
        """Add ``rollup`` and set the consumer's offset in one transaction; rows touched."""
        return await self._write(lambda: self._apply(consumer, rollup, offset))

    def _apply(self, consumer: str, rollup: Rollup, offset: int) -> int:
        conn = self._wconn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._prune_firsts(conn, rollup.firsts)
            for first in _new_firsts(conn, rollup.firsts):
                rollup.add_first(first)
            counts = rollup.counts()
            conn.executemany(UPSERT, _rows(counts))
            conn.execute(SET_OFFSET, (consumer, offset))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.rows_written += len(counts)
        return len(counts)

    def _prune_firsts(self, conn: sqlite3.Connection, firsts: list[First]) -> None:
        if not firsts:
            return
        cutoff = max(f.day for f in firsts) - FIRSTS_DAYS
        if cutoff > self._firsts_cutoff:
            conn.execute("DELETE FROM firsts WHERE day < ?", (cutoff,))
            self._firsts_cutoff = cutoff

    async def query(
        self, tenant: str, categories: Sequence[str], days: tuple[int, int]
    ) -> list[Row]:
        """Every counter of the tenant's ``categories`` ("" = global) with day in ``days``."""
        marks = ",".join("?" * len(categories))
        sql = (
            "SELECT category, day, metric, n FROM rollups WHERE tenant = ?"
            f" AND category IN ({marks}) AND day BETWEEN ? AND ?"
        )
        args = (tenant, *categories, *days)
        return await self._read(lambda: self._rconn().execute(sql, args).fetchall())

    async def ranked(
        self, tenant: str, days: tuple[int, int], metric: str, page: tuple[int, int, bool]
    ) -> list[Row]:
        """The counters of one page of the tenant's categories, ranked by their sum of
        ``metric`` over ``days`` (then by name); page = (limit, offset, descending)."""
        limit, offset, desc = page
        order = "DESC" if desc else "ASC"
        sql = (
            "WITH sums AS (SELECT category, SUM(CASE WHEN metric = ? THEN n ELSE 0 END) AS k"
            " FROM rollups WHERE tenant = ? AND category != '' AND day BETWEEN ? AND ?"
            f" GROUP BY category ORDER BY k {order}, category LIMIT ? OFFSET ?)"
            " SELECT r.category, r.day, r.metric, r.n FROM rollups r JOIN sums USING (category)"
            " WHERE r.tenant = ? AND r.day BETWEEN ? AND ?"
        )
        args = (metric, tenant, *days, limit, offset, tenant, *days)
        return await self._read(lambda: self._rconn().execute(sql, args).fetchall())

    async def row_count(self) -> int:
        def count() -> int:
            return int(self._rconn().execute("SELECT COUNT(*) FROM rollups").fetchone()[0])

        return await self._read(count)

    def _wconn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise RuntimeError("stats store is closed")
        return self._writer

    def _rconn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("stats store is closed")
        return self._reader

    async def close(self) -> None:
        for conn_name, pool in (("_reader", self._read_pool), ("_writer", self._write_pool)):
            conn = getattr(self, conn_name)
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
                setattr(self, conn_name, None)
            pool.shutdown(wait=True)


def _new_firsts(conn: sqlite3.Connection, firsts: list[First]) -> list[First]:
    """The opens/clicks whose key the table does not hold yet (the first of each key in
    the batch), now remembered: one read per 500 keys and one executemany, not a
    statement per event."""
    batch: dict[int, First] = {}
    for f in firsts:
        batch.setdefault(f.key, f)
    keys = list(batch)
    for i in range(0, len(keys), SEEN_CHUNK):
        chunk = keys[i : i + SEEN_CHUNK]
        sql = SEEN.format(",".join("?" * len(chunk)))
        for (k,) in conn.execute(sql, chunk):
            del batch[k]
    conn.executemany(FIRST, [(f.key, f.day) for f in batch.values()])
    return list(batch.values())


def _rows(counts: dict[Key, int]) -> list[tuple[str, str, int, str, int]]:
    return [(t, c, d, m, n) for (t, c, d, m), n in counts.items()]
