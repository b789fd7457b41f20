"""The activity store: ``<data_dir>/activity.duckdb``, owned by the node process.

One DuckDB connection used from one dedicated thread: every call is queued to it, so the
event loop never waits on DuckDB (which releases the GIL while it works), and inserts,
deletes and queries never run at once on the connection. DuckDB allows one process to
open the file for writing (engines.md section 3), which is the node. (The Python client
takes the GIL back between execution tasks to check for signals, so a statement runs
slower while another thread holds the GIL: an insert of 200k events measured 0.65 s
alone, 0.98 s beside a busy Python thread.)

Ingest is one transaction per batch: the rows and the consumer's offset together, so
the offset read back at start is exactly what is stored (no event twice, none missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import duckdb
import pyarrow as pa

from postline.activity import schema

T = TypeVar("T")
Row = tuple[Any, ...]
FILE_NAME = "activity.duckdb"
# WAL bytes after which a commit checkpoints. DuckDB's default (16 MB, ~45k events here)
# checkpointed every other batch, and each checkpoint rewrites the partly filled row
# group: ~3 us an event at 20k-row checkpoints, ~1.5 at 80k. 64 MB (~180k events) halves
# the ingest's checkpoint work; each checkpoint then stalls ingest ~0.1-0.4 s.
CHECKPOINT_THRESHOLD = "64MB"
# DuckDB threads for an ingest: one, so the insert leaves the other core to the log read
# and the Arrow build it overlaps with (consumer.py); freshness at 200k events/s offered,
# 2 cores: p99 0.41-0.57 s with one thread, 0.66-1.7 s with two. Queries get DuckDB's
# default (one per core); switching costs ~0.2 ms, and only when the kind of work changes.
INGEST_THREADS = 1


class QueryTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the query ran longer than {seconds:g} s")
        self.seconds = seconds


class ActivityStore:
    def __init__(
        self, path: Path, conn: duckdb.DuckDBPyConnection, executor: ThreadPoolExecutor
    ) -> None:
        self.path = path
        self._conn = conn
        self._executor = executor
        self.rows_stored = 0  # rows inserted since open
        self.batches = 0  # ingest transactions since open
        self.rows_pruned = 0  # rows removed by retention since open
        self.row_count = 0  # rows in the table (counted at open, kept up to date since)
        self._lock = threading.Lock()
        self._threads = _Threads()  # used on the store's thread only
        self._running: object | None = None  # the token of the query running, if any

    @classmethod
    async def open(cls, data_dir: Path, memory_limit: str = "1GB") -> Self:
        executor = ThreadPoolExecutor(1, thread_name_prefix="activity-duckdb")
        path = data_dir / FILE_NAME
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, str(path), memory_limit)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(path, conn, executor)
        store.row_count = await store.rows()
        return store

    async def _run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def offset(self) -> int:
        """The offset of the last event stored (0: none yet)."""
        return await self._run(_offset)

    async def ingest(self, batch: pa.Table, last_offset: int) -> None:
        """Store the rows of ``batch`` (rows.batch_table) and ``last_offset`` at once."""
        await self._run(functools.partial(self._ingest, batch, last_offset))
        self.rows_stored += batch.num_rows
        self.row_count += batch.num_rows
        self.batches += 1

    async def query(
        self, sql: str, params: Sequence[object], timeout: float | None = None
    ) -> list[Row]:
        """Rows of ``sql``; past ``timeout`` seconds of running, DuckDB is interrupted and
        :class:`QueryTimeout` raised (ingest waits behind a query on the one connection)."""
        token = object()
        job = functools.partial(self._fetch, token, sql, list(params))
        future = asyncio.ensure_future(self._run(job))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._interrupt(token)
            with contextlib.suppress(Exception):
                await future
            raise QueryTimeout(timeout or 0.0) from None

    def _ingest(self, batch: pa.Table, last_offset: int, conn: duckdb.DuckDBPyConnection) -> None:
        self._threads.use(conn, INGEST_THREADS)
        _ingest(batch, last_offset, conn)

    def _fetch(
        self, token: object, sql: str, params: list[object], conn: duckdb.DuckDBPyConnection
    ) -> list[Row]:
        self._threads.use(conn, None)
        with self._lock:
            self._running = token
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            with self._lock:
                self._running = None

    def _interrupt(self, token: object) -> None:
        """Interrupt the query of ``token`` if it is the one running (not an ingest)."""
        with self._lock:
            if self._running is token:
                self._conn.interrupt()

    async def prune(self, before: float) -> int:
        """Delete the rows of events older than ``before`` (unix seconds)."""
        gone = await self._run(functools.partial(_prune, int(before * 1_000_000)))
        self.rows_pruned += gone
        self.row_count -= gone
        return gone

    async def rows(self) -> int:
        """Rows stored (a count over the table)."""
        return await self._run(_rows)

    def disk_bytes(self) -> int:
        """Bytes of the database file and its WAL (no I/O beyond two stat calls)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        return total

    async def close(self) -> None:
        try:
            await self._run(_close)
        finally:
            self._executor.shutdown(wait=True)


# -- on the store's thread --------------------------------------------------------------


class _Threads:
    """DuckDB's ``threads`` setting, changed only when the wanted value changes."""

    def __init__(self) -> None:
        self.default: int | None = None  # DuckDB's own, read at the first change
        self.current: int | None = None

    def use(self, conn: duckdb.DuckDBPyConnection, threads: int | None) -> None:
        """``threads`` (None: DuckDB's default) for what ``conn`` runs next."""
        if self.default is None:
            row = conn.execute("SELECT current_setting('threads')").fetchone()
            self.default = self.current = int(row[0]) if row else 1
        wanted = self.default if threads is None else threads
        if wanted != self.current:
            conn.execute(f"SET threads = {int(wanted)}")
            self.current = wanted


def _connect(path: str, memory_limit: str) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(
        path,
        config={"memory_limit": memory_limit, "checkpoint_threshold": CHECKPOINT_THRESHOLD},
    )
    try:
        for statement in schema.CREATE:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


def _offset(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute(schema.SELECT_OFFSET).fetchone()
    return int(row[0]) if row else 0


def _ingest(batch: pa.Table, last_offset: int, conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("BEGIN")
    try:
        conn.register("batch", batch)
        conn.execute(schema.INSERT_BATCH)
        conn.execute(schema.SET_OFFSET, [last_offset])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.unregister("batch")


def _prune(before_us: int, conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute(schema.DELETE_OLDER, [before_us]).fetchone()
    return int(row[0]) if row else 0


def _rows(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute(schema.COUNT_ROWS).fetchone()
    return int(row[0]) if row else 0


def _close(conn: duckdb.DuckDBPyConnection) -> None:
    conn.close()
