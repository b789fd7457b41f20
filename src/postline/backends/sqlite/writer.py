"""The connections of ``spool.db``: a group-commit writer thread and a pool of readers.

Group commit (the lever of shared engines.md section 3: one fsync per transaction, not per
request): callers hand an operation, a function of the write connection, to
:meth:`GroupCommitWriter.run`. The writer thread takes everything queued, runs it in ONE
transaction, commits (one WAL sync with ``synchronous=FULL``), then resolves the callers'
futures with one ``call_soon_threadsafe`` per event loop. Batches size themselves: while a
commit syncs, the next batch queues up. ``commit_window`` adds an optional wait.

A failing operation does not take its batch down: the transaction is rolled back and the
operations are run again one per transaction, so only the bad one fails. Storage errors
(disk full, read-only, I/O error, locked, corrupt) reach the caller as
:class:`SpoolUnavailable`; anything else (a bug, a bad value) as itself.

Reads run on connections of their own in a small thread pool, each call inside a read
transaction, so a call that runs several queries sees one snapshot. WAL readers see the
last commit and neither wait for the writer nor make it wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from postline.spool.interface import SpoolUnavailable

T = TypeVar("T")
Connect = Callable[[], sqlite3.Connection]
MAX_BATCH = 4096  # operations per transaction; bounds the latency of one commit
READ_THREADS = 2

_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "storage is read-only",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot open the spool files",
    sqlite3.SQLITE_BUSY: "spool is locked by another process",
    sqlite3.SQLITE_LOCKED: "spool is locked",
    sqlite3.SQLITE_PROTOCOL: "spool lock protocol error",
    sqlite3.SQLITE_CORRUPT: "spool database is corrupt",
    sqlite3.SQLITE_NOTADB: "spool.db is not a database",
}


_TEXT_REASONS = [
    ("full", "disk full"),
    ("readonly", "storage is read-only"),
    ("I/O", "disk I/O error"),
    ("locked", "spool is locked"),
]


def translate(exc: BaseException) -> BaseException:
    """Storage errors become SpoolUnavailable (the doors answer 503/452); others stay."""
    if isinstance(exc, SpoolUnavailable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        reason = _UNAVAILABLE.get(code & 0xFF) if isinstance(code, int) else None
        if reason is None and isinstance(exc, sqlite3.OperationalError):
            reason = _reason_from_text(str(exc))
    elif isinstance(exc, OSError):
        reason = f"storage error: {exc.strerror or exc}"
    else:
        reason = None
    if reason is None:
        return exc
    unavailable = SpoolUnavailable(reason)
    unavailable.__cause__ = exc
    return unavailable


def _reason_from_text(text: str) -> str | None:
    for needle, reason in _TEXT_REASONS:
        if needle in text:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    ops: int  # operations run
    batches: int  # queue drains, each tried as one transaction
    commits: int  # successful COMMITs: one WAL sync each with fsync on
    failed_ops: int  # operations that ended in an error
    split_batches: int  # batches rolled back and re-run one operation per transaction
    largest_batch: int


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


Outcome = tuple[bool, Any]  # (ok, result or exception)


class GroupCommitWriter:
    def __init__(self, connect: Connect, window: float = 0.0) -> None:
        self._connect = connect
        self._window = window
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = True
        self._ops = self._batches = self._commits = self._failed = self._split = 0
        self._largest = 0

    async def start(self, setup: Callable[[sqlite3.Connection], T]) -> T:
        """Open the connection in the writer thread, run ``setup`` there, then serve."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[T] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(loop, started, setup), name="spool-writer", daemon=True
        )
        self._closed = False
        self._thread.start()
        try:
            return await started
        except BaseException:
            self._closed = True
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next transaction; return once it is committed."""
        if self._closed:
            raise SpoolUnavailable("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    async def close(self) -> None:
        """Finish what is queued, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            self._ops, self._batches, self._commits, self._failed, self._split, self._largest
        )

    # -- the writer thread -------------------------------------------------------------

    def _main(
        self,
        loop: asyncio.AbstractEventLoop,
        started: asyncio.Future[T],
        setup: Callable[[sqlite3.Connection], T],
    ) -> None:
        try:
            conn = self._connect()
        except Exception as exc:
            _post(loop, [(started, (False, translate(exc)))])
            return
        try:
            try:
                value = setup(conn)
            except Exception as exc:
                _post(loop, [(started, (False, translate(exc)))])
                return
            _post(loop, [(started, (True, value))])
            self._serve(conn)
        finally:
            conn.close()
            self._fail_leftovers()

    def _serve(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            job = get()
            if job is None:
                return
            if self._window:
                time.sleep(self._window)
            jobs, stop = [job], False
            while len(jobs) < MAX_BATCH:
                try:
                    job = get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            self._resolve(jobs, self._execute(conn, jobs))
            if stop:
                return

    def _execute(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Outcome]:
        self._ops += len(jobs)
        self._batches += 1
        self._largest = max(self._largest, len(jobs))
        results = self._transaction(conn, jobs)
        if isinstance(results, list):
            return [(True, r) for r in results]
        if len(jobs) == 1:
            self._failed += 1
            return [(False, translate(results))]
        self._split += 1  # find the bad operation: one transaction each
        return [self._execute_alone(conn, job) for job in jobs]

    def _execute_alone(self, conn: sqlite3.Connection, job: _Job) -> Outcome:
        results = self._transaction(conn, [job])
        if isinstance(results, list):
            return (True, results[0])
        self._failed += 1
        return (False, translate(results))

    def _transaction(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Any] | Exception:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [job.fn(conn) for job in jobs]
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            return exc
        self._commits += 1
        return results

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, items in by_loop.items():
            _post(loop, items)

    def _fail_leftovers(self) -> None:
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _post(job.loop, [(job.future, (False, SpoolUnavailable("spool is closed")))])


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # after an I/O error SQLite may have rolled back already


def _post(
    loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Future[Any], Outcome]]
) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        loop.call_soon_threadsafe(_set_futures, items)


def _set_futures(items: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in items:
        if future.done():  # the caller was cancelled; the write happened all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Reader:
    """A few threads, each with its own read-only connection, so that a long read
    (``counts`` scans every delivery) does not hold up ``load`` on the delivery path.
    Each call runs in one read transaction: one snapshot for all its queries."""

    def __init__(self, connect: Connect, threads: int = READ_THREADS) -> None:
        self._connect = connect
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="spool-read")
        self._local = threading.local()  # .conn: the connection of the current thread
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SpoolUnavailable("spool is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                _rollback(conn)
        except Exception as exc:
            translated = translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._conns.append(conn)
        return conn

    async def close(self) -> None:
        """Wait for the reads under way, then close every connection."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, True)
        for conn in self._conns:
            conn.close()
