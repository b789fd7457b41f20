"""The write connection of ``spool.db``: a group-commit writer thread (readers: reader.py).

Group commit (the lever of shared engines.md section 3: one fsync per transaction, not per
request): callers hand an operation, a function of the write connection, to
:meth:`GroupCommitWriter.run`. The writer thread takes everything queued, runs it in ONE
transaction, commits (one WAL sync with ``synchronous=FULL``), then resolves the callers'
futures with one ``call_soon_threadsafe`` per event loop. Batches size themselves: while a
commit syncs, the next batch queues up. ``commit_window`` adds an optional wait.

A failing operation does not take its batch down: the transaction is rolled back and the
operations are run again one per transaction, so only the bad one fails. (An operation that
can tell its own failure from a storage error may instead roll back to a savepoint of its
own and return the error as its result, so the batch commits at once: an accept whose body
file turns out bad, spool.py.) Storage errors
(disk full, read-only, I/O error, locked, corrupt) reach the caller as
:class:`SpoolUnavailable` (errors.py); anything else (a bug, a bad value) as itself.

The owner's writer has a :class:`Keeper` (compact.py) with three hooks: ``committed``
after each batch (the space accounting learns the file's page counts), ``full`` on
SQLITE_FULL, and ``upkeep`` between batches when nothing is queued, at most once a second
(vacuum, WAL truncation, reserve). A full disk splits a batch by kind: new mail
(``essential=False``) is refused, and the operations that finish work in flight (settle,
lease, release, expire) run again, once more after ``full`` has given the spool its
reserve (space.py).

Reads run on connections of their own in a small thread pool, each call inside a read
transaction, so a call that runs several queries sees one snapshot. WAL readers see the
last commit and neither wait for the writer nor make it wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from postline.backends.sqlite.errors import is_full, rollback, translate
from postline.spool.interface import SpoolUnavailable

T = TypeVar("T")
Connect = Callable[[], sqlite3.Connection]
MAX_BATCH = 4096  # operations per transaction; bounds the latency of one commit
UPKEEP_INTERVAL = 1.0  # seconds between two upkeep runs

log = logging.getLogger("postline.spool")


class Keeper(Protocol):
    def committed(self, conn: sqlite3.Connection) -> None:
        """After each batch that committed something."""

    def full(self) -> bool:
        """Essential writes hit SQLITE_FULL: free space for them; False if none was freed."""

    def upkeep(self, conn: sqlite3.Connection, idle: bool, waiting: Callable[[], bool]) -> None:
        """Nothing is queued (``idle``: for a whole interval); stop early when ``waiting()``."""


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    ops: int  # operations run
    batches: int  # queue drains, each tried as one transaction
    commits: int  # successful COMMITs: one WAL sync each with fsync on
    failed_ops: int  # operations that ended in an error
    split_batches: int  # batches rolled back and re-run one operation per transaction
    largest_batch: int
    full_batches: int = 0  # batches that hit SQLITE_FULL (0 while admission works)


Outcome = tuple[bool, Any]  # (ok, result or exception)
Callback = Callable[[bool, Any], None]  # called in the writer thread with the outcome


class _Job:
    __slots__ = ("callback", "essential", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any] | None,
        loop: asyncio.AbstractEventLoop | None,
        essential: bool,
        callback: Callback | None = None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.essential = essential
        self.callback = callback


class GroupCommitWriter:
    def __init__(
        self,
        connect: Connect,
        window: float = 0.0,
        *,
        keeper: Keeper | None = None,
    ) -> None:
        self._connect = connect
        self._window = window
        self._keeper = keeper
        self._upkept = 0.0
        self._upkeep_error = ""
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = True
        self._ops = self._batches = self._commits = self._failed = self._split = 0
        self._largest = self._full = 0

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

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, essential: bool = True) -> T:
        """Run ``fn`` in the next transaction; return once it is committed.

        ``essential``: it finishes work in flight and may use the reserve on a full disk;
        new mail is not essential."""
        if self._closed:
            raise SpoolUnavailable("spool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop, essential))
        return await future

    def submit(self, fn: Callable[[sqlite3.Connection], Any], callback: Callback, *,
               essential: bool = True) -> None:  # fmt: skip
        """Run ``fn`` in the next transaction and call ``callback(ok, result or exception)``
        in the writer thread once it is committed (or failed): for a caller that answers
        from any thread (the relay link, smtp/supervisor.py), so no event loop turn sits
        between the commit and the answer. ``callback`` must be quick and must not raise."""
        if self._closed:
            raise SpoolUnavailable("spool is closed")
        self._queue.put(_Job(fn, None, None, essential, callback))

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
            self._ops,
            self._batches,
            self._commits,
            self._failed,
            self._split,
            self._largest,
            self._full,
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
        get_nowait = self._queue.get_nowait
        while True:
            job = self._next_job(conn)
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
            outcomes = self._execute(conn, jobs)
            if self._keeper is not None:  # before the callers learn that their batch is in
                self._keeper.committed(conn)
            self._resolve(jobs, outcomes)
            if stop:
                return
            if self._queue.empty() and time.monotonic() - self._upkept >= UPKEEP_INTERVAL:
                self._run_upkeep(conn, idle=False)

    def _next_job(self, conn: sqlite3.Connection) -> _Job | None:
        """The next job; while none comes, upkeep once per interval."""
        if self._keeper is None:
            return self._queue.get()
        while True:
            try:
                return self._queue.get(timeout=UPKEEP_INTERVAL)
            except queue.Empty:
                self._run_upkeep(conn, idle=True)

    def _run_upkeep(self, conn: sqlite3.Connection, *, idle: bool) -> None:
        if self._keeper is None:
            return
        self._upkept = time.monotonic()
        try:
            self._keeper.upkeep(conn, idle, lambda: not self._queue.empty())
            self._keeper.committed(conn)
        except Exception as exc:  # upkeep must never stop the writer; log once per cause
            rollback(conn)
            reason = str(exc)
            if reason != self._upkeep_error:
                log.warning("spool upkeep failed; retried later", extra={"reason": reason})
            self._upkeep_error = reason
        else:
            self._upkeep_error = ""

    def _execute(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[Outcome]:
        self._ops += len(jobs)
        self._batches += 1
        self._largest = max(self._largest, len(jobs))
        results = self._transaction(conn, jobs)
        if isinstance(results, Exception) and is_full(results):
            return self._when_full(conn, jobs, results)
        return self._outcomes(conn, jobs, results)

    def _outcomes(
        self, conn: sqlite3.Connection, jobs: list[_Job], results: list[Any] | Exception
    ) -> list[Outcome]:
        if isinstance(results, list):
            return [(True, r) for r in results]
        if len(jobs) == 1:
            self._failed += 1
            return [(False, translate(results))]
        self._split += 1  # find the bad operation: one transaction each
        return [self._execute_alone(conn, job) for job in jobs]

    def _when_full(
        self, conn: sqlite3.Connection, jobs: list[_Job], full: Exception
    ) -> list[Outcome]:
        """New mail is refused; work in flight runs again, with the reserve if need be."""
        self._full += 1
        refused: Outcome = (False, translate(full))
        essential = [j for j in jobs if j.essential]
        self._failed += len(jobs) - len(essential)
        if not essential:
            return [refused] * len(jobs)
        results: list[Any] | Exception = full
        if len(essential) < len(jobs):  # without the new mail it may fit
            results = self._transaction(conn, essential)
        if is_full(results) and self._keeper is not None and self._keeper.full():
            results = self._transaction(conn, essential)
        done = dict(zip(map(id, essential), self._outcomes(conn, essential, results), strict=True))
        return [done.get(id(j), refused) for j in jobs]

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
            rollback(conn)
            return exc
        self._commits += 1
        return results

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.callback is not None:
                _call(job.callback, outcome)
                continue
            assert job.loop is not None and job.future is not None
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
            if job is None:
                continue
            closed: Outcome = (False, SpoolUnavailable("spool is closed"))
            if job.callback is not None:
                _call(job.callback, closed)
            elif job.loop is not None and job.future is not None:
                _post(job.loop, [(job.future, closed)])


def _call(callback: Callback, outcome: Outcome) -> None:
    try:
        callback(*outcome)
    except Exception:  # a caller's bug must not stop the writer
        log.exception("a spool writer callback failed")


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
