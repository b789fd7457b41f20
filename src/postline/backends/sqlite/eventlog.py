"""The event log of ``spool.db`` seen from another process: the event pipeline's worker.

The node's spool owns the file (schema, group commit); the worker only reads events and
writes its consumers' offsets and the retention's deletes, each a short transaction of
its own (``busy_timeout`` waits out the node's writer). Reads use a read-only connection,
so they never block the node. Both connections live on one thread of their own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from postline.backends.sqlite import reader as reads
from postline.backends.sqlite import schema as sql
from postline.backends.sqlite.transactions import prune_events
from postline.model.events import EventRecord

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000  # an offset commit may wait this long for the node's writer


class SqliteEventLog:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir).resolve() / "spool.db"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eventlog")
        self._ro: sqlite3.Connection | None = None
        self._rw: sqlite3.Connection | None = None

    def _connect(self) -> None:
        if self._ro is None:
            self._ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            self._ro.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if self._rw is None:
            self._rw = sqlite3.connect(self.path, isolation_level=None)
            self._rw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    async def _run(self, fn: Callable[[sqlite3.Connection, sqlite3.Connection], T]) -> T:
        def call() -> T:
            self._connect()
            assert self._ro is not None and self._rw is not None
            return fn(self._ro, self._rw)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self._run(lambda ro, _: reads.read_events(after, limit, ro))

    async def committed(self, consumer: str) -> int:
        return await self._run(lambda ro, _: reads.committed(consumer, ro))

    async def commit(self, consumer: str, offset: int) -> None:
        def write(_: sqlite3.Connection, rw: sqlite3.Connection) -> None:
            with rw:
                rw.execute("BEGIN IMMEDIATE")
                rw.execute(sql.COMMIT_OFFSET, (consumer, offset))

        await self._run(write)

    async def head(self) -> int:
        return await self._run(lambda ro, _: reads.head(ro))

    async def prune(self, upto: int, before: float, limit: int) -> int:
        def write(_: sqlite3.Connection, rw: sqlite3.Connection) -> int:
            with rw:
                rw.execute("BEGIN IMMEDIATE")
                return prune_events(upto, before, limit, rw)

        return await self._run(write)

    async def close(self) -> None:
        def shut(ro: sqlite3.Connection, rw: sqlite3.Connection) -> None:
            ro.close()
            rw.close()

        if self._ro is not None:
            await self._run(shut)
        self._pool.shutdown(wait=True)
