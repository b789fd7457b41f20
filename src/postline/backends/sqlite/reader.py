"""The read side of ``spool.db``: a small pool of threads, one connection each, and the
read operations they run (each inside one read transaction).

WAL readers see the last commit and neither wait for the writer nor make it wait.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from postline.backends.sqlite import asm
from postline.backends.sqlite import schema as sql
from postline.backends.sqlite.errors import rollback, translate
from postline.backends.sqlite.writer import Connect
from postline.model.events import EventRecord
from postline.spool.interface import (
    DROP_REASONS,
    Counts,
    QueueInfo,
    SpoolUnavailable,
    StoredMessage,
)

T = TypeVar("T")
Row = tuple[Any, ...]
READ_THREADS = 2


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
                rollback(conn)
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


# -- reads, run by the reader thread inside one read transaction ---------------------------


def load(message_ids: list[int], conn: sqlite3.Connection) -> list[StoredMessage]:
    """Messages in the order asked (missing ones left out); a body shared by many messages
    is read once and the same bytes object is handed to each of them."""
    found = {r[0]: r for r in sql.select_in(conn, sql.SELECT_MESSAGES, (), message_ids)}
    body_ids = sorted({r[1] for r in found.values()})
    rows = sql.select_in(conn, sql.SELECT_BODIES, (BLOB_READ_ABOVE,), body_ids)
    bodies: dict[int, bytes] = {
        bid: data if data is not None else _read_blob(conn, bid) for bid, data in rows
    }
    out = []
    for mid in message_ids:
        r = found.get(mid)
        if r is not None:
            out.append(StoredMessage(mid, r[2], r[3], r[4], bodies[r[1]], r[5]))
    return out


BLOB_READ_ABOVE = 1024 * 1024  # larger bodies are read through a blob handle (one copy)


def _read_blob(conn: sqlite3.Connection, body_id: int) -> bytes:
    with conn.blobopen("bodies", "data", body_id, readonly=True) as blob:
        return blob.read()


def scalar(statement: str, args: Row, conn: sqlite3.Connection) -> Any:
    return conn.execute(statement, args).fetchone()[0]


def queues(conn: sqlite3.Connection) -> list[QueueInfo]:
    infos = [QueueInfo(*r) for r in conn.execute(sql.SELECT_QUEUES)]
    return sorted(infos, key=lambda q: (q.tenant, q.domain))


def counts(conn: sqlite3.Connection) -> Counts:
    c = Counts()
    for leased, retried, n in conn.execute(sql.SELECT_STATES):
        if leased:
            c.inflight += n
        elif retried:
            c.deferred += n
        else:
            c.queued += n
    terminal = dict(conn.execute(sql.SELECT_COUNTERS).fetchall())
    c.delivered, c.bounced = terminal["delivered"], terminal["bounced"]
    c.expired, c.dropped = terminal["expired"], terminal["dropped"]
    c.bodies, c.messages, c.events = conn.execute(sql.SELECT_SIZES).fetchone()
    c.by_domain = dict(conn.execute(sql.SELECT_BY_DOMAIN).fetchall())
    return c


def queue_summary(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """Pending deliveries and the creation time of the oldest (ids grow with time, so the
    first row is the oldest: one index step, not a scan)."""
    (depth,) = conn.execute("SELECT count(*) FROM deliveries").fetchone()
    row = conn.execute("SELECT created_at FROM deliveries ORDER BY id LIMIT 1").fetchone()
    return int(depth), (float(row[0]) if row else None)


def read_events(after: int, limit: int, conn: sqlite3.Connection) -> list[tuple[int, EventRecord]]:
    rows = conn.execute(sql.SELECT_EVENTS, (after, limit))
    return [(r[0], EventRecord(r[1], r[2], r[3], r[4], r[5], r[6], r[7])) for r in rows]


def head(conn: sqlite3.Connection) -> int:
    return int(conn.execute(sql.SELECT_HEAD).fetchone()[0])


def committed(consumer: str, conn: sqlite3.Connection) -> int:
    row = conn.execute(sql.SELECT_OFFSET, (consumer,)).fetchone()
    return int(row[0]) if row else 0


def suppressed(
    tenant: str, emails: list[str], conn: sqlite3.Connection, groups: Sequence[int] = ()
) -> dict[str, str]:
    """Lower-cased email -> drop reason; with ``groups`` (group_id, *groups_to_display)
    also the members of group_id, after checking every group exists (asm.group_drops)."""
    out = asm.group_drops(tenant, emails, groups, conn) if groups else {}
    lists: dict[str, set[str]] = {}
    for email, list_name in sql.select_in(conn, sql.SELECT_SUPPRESSED, (tenant,), emails):
        lists.setdefault(email, set()).add(list_name)
    for email, names in lists.items():
        reason = next((r for name, r in DROP_REASONS.items() if name in names), None)
        if reason is not None:
            out[email] = reason
    return out


# One entry of a tenant's suppression list: (email, created, reason, status).
SuppressionRow = tuple[str, float, str, str]
_SUPPRESSION_PAGE = (
    "SELECT email, created, reason, status FROM suppressions"
    " WHERE tenant = ? AND list = ? AND created >= ? AND created < ? AND email LIKE ? ESCAPE '\\'"
    " ORDER BY created DESC, email LIMIT ? OFFSET ?"
)
_SUPPRESSION_ONE = (
    "SELECT email, created, reason, status FROM suppressions"
    " WHERE tenant = ? AND list = ? AND email = ?"
)


def suppression_page(
    tenant: str,
    list_name: str,
    window: tuple[float, float],
    like: str,
    page: tuple[int, int],
    conn: sqlite3.Connection,
) -> list[SuppressionRow]:
    """A page (limit, offset) of one list, newest first: entries created in
    ``[window[0], window[1])`` whose email is LIKE ``like`` (``\\`` escapes)."""
    args = (tenant, list_name, *window, like, *page)
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(_SUPPRESSION_PAGE, args)]


def suppression(
    tenant: str, list_name: str, email: str, conn: sqlite3.Connection
) -> SuppressionRow | None:
    r = conn.execute(_SUPPRESSION_ONE, (tenant, list_name, email)).fetchone()
    return (r[0], r[1], r[2], r[3]) if r else None
