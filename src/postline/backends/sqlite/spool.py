"""The embedded spool: ``<data_dir>/spool.db`` (SQLite, WAL), plus the event log and the
suppression lists that live in the same file so their writes share its transactions.

Writes (accept, lease, settle, release, expire, commit, add_suppression) go through the
group-commit writer thread (writer.py); rows are built on the caller's side with ids taken
from in-process counters (this process is the only writer), so the writer thread only runs
``executemany``. Reads run on the reader thread. Leases are a visibility timeout:
``due_at = now + lease_for, leased = 1``; an unsettled lease is simply due again later.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postline.backends.sqlite import schema as sql
from postline.backends.sqlite.writer import GroupCommitWriter, Reader, WriterStatistics
from postline.config import SpoolConfig
from postline.model.events import DROPPED, EventRecord
from postline.spool.interface import (
    DROP_REASONS,
    EXPIRE_LEASE,
    AcceptBatch,
    Counts,
    Lease,
    QueueInfo,
    Settle,
    Settlement,
    SpoolUnavailable,
    StoredMessage,
)

SPACE_CHECK_INTERVAL = 1.0  # seconds between two statvfs of data_dir

Row = tuple[Any, ...]


async def open_sqlite_spool(
    data_dir: str, cfg: SpoolConfig, *, recover: bool = True
) -> SqliteSpool:
    """Open (creating if needed) ``<data_dir>/spool.db``.

    ``recover``: make every leased delivery due now; right for the node that owns the spool
    (after a restart nothing can be in flight), wrong for a process only reading it.
    """
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolUnavailable(f"cannot create the data directory: {exc.strerror}") from exc
    path = str(Path(data_dir) / "spool.db")
    writer = GroupCommitWriter(functools.partial(_connect, path), float(cfg.commit_window))
    setup = functools.partial(_setup, fsync=cfg.fsync, recover=recover)
    max_ids = await writer.start(setup)
    reader = Reader(functools.partial(_connect, path, reader=True))
    return SqliteSpool(data_dir, cfg, writer, reader, max_ids)


def _connect(path: str, *, reader: bool = False) -> sqlite3.Connection:
    # readers are closed by the thread that closes the spool, not the one that used them
    conn = sqlite3.connect(
        path, isolation_level=None, cached_statements=256, check_same_thread=not reader
    )
    if reader:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=1")
    return conn


def _setup(conn: sqlite3.Connection, *, fsync: bool, recover: bool) -> Row:
    sql.configure(conn, fsync=fsync)
    sql.create(conn)
    if recover:
        conn.execute(sql.RECOVER, (time.time(),))
    row: Row = conn.execute(sql.MAX_IDS).fetchone()
    return row


@dataclass(slots=True)
class _AcceptRows:
    body: Row | None
    messages: list[Row]
    deliveries: list[Row]
    events: list[Row]
    dropped: int


class SqliteSpool:
    """Implements :class:`~postline.spool.interface.Spool` and
    :class:`~postline.events.log.EventLog`; see :func:`open_sqlite_spool`."""

    def __init__(
        self,
        data_dir: str,
        cfg: SpoolConfig,
        writer: GroupCommitWriter,
        reader: Reader,
        max_ids: Row,
    ) -> None:
        self._data_dir = data_dir
        self._min_free = cfg.min_free_bytes
        self._writer = writer
        self._reader = reader
        self._body_ids = itertools.count(max_ids[0] + 1)
        self._message_ids = itertools.count(max_ids[1] + 1)
        self._delivery_ids = itertools.count(max_ids[2] + 1)
        self._space_checked = -SPACE_CHECK_INTERVAL
        self._space_problem: str | None = None

    # -- Spool ---------------------------------------------------------------------------

    async def accept(self, batch: AcceptBatch) -> None:
        self._check_space()
        await self._writer.run(functools.partial(_insert, self._accept_rows(batch)))

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        if limit <= 0:
            return []
        args = (domain.lower(), tenant, now, limit)
        return await self._writer.run(
            functools.partial(_lease, sql.SELECT_DUE, args, now + lease_for)
        )

    async def settle(self, settles: Sequence[Settle]) -> None:
        if settles:
            await self._writer.run(functools.partial(_settle, [_settle_item(s) for s in settles]))

    async def release(self, leases: Sequence[Lease], due_at: float) -> None:
        if leases:
            rows = [(due_at, lease.delivery_id) for lease in leases]
            await self._writer.run(functools.partial(_executemany, sql.RELEASE, rows))

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        return await self._reader.run(functools.partial(_load, list(message_ids)))

    async def queues(self, now: float) -> list[QueueInfo]:
        return await self._reader.run(_queues)

    async def next_due(self, tenant: str, domain: str) -> float | None:
        """When the queue next has work (a due or a lease's end), None when it is empty."""
        args = (domain.lower(), tenant)
        return await self._reader.run(functools.partial(_scalar, sql.SELECT_NEXT_DUE, args))

    async def expire(self, now: float, limit: int) -> list[Lease]:
        if limit <= 0:
            return []
        args = (now, now, limit)
        return await self._writer.run(
            functools.partial(_lease, sql.SELECT_EXPIRED, args, now + EXPIRE_LEASE)
        )

    async def counts(self) -> Counts:
        return await self._reader.run(_counts)

    # -- EventLog ------------------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self._reader.run(functools.partial(_read_events, after, limit))

    async def committed(self, consumer: str) -> int:
        return await self._reader.run(functools.partial(_committed, consumer))

    async def commit(self, consumer: str, offset: int) -> None:
        await self._writer.run(
            functools.partial(_executemany, sql.COMMIT_OFFSET, [(consumer, offset)])
        )

    # -- suppressions --------------------------------------------------------------------

    async def suppressed(self, tenant: str, emails: Sequence[str]) -> dict[str, str]:
        """Lower-cased email -> drop reason (e.g. "Bounced Address") of the given emails
        that are on a list that makes the accept stage drop them."""
        wanted = sorted({e.lower() for e in emails})
        if not wanted:
            return {}
        return await self._reader.run(functools.partial(_suppressed, tenant, wanted))

    async def add_suppression(
        self,
        tenant: str,
        list_name: str,
        email: str,
        *,
        reason: str = "",
        status: str = "",
        created: float | None = None,
    ) -> None:
        when = time.time() if created is None else created
        row = (tenant, email.lower(), list_name, when, reason, status)
        await self._writer.run(functools.partial(_executemany, sql.UPSERT_SUPPRESSION, [row]))

    # -- lifecycle -----------------------------------------------------------------------

    def statistics(self) -> WriterStatistics:
        return self._writer.statistics()

    async def close(self) -> None:
        await self._writer.close()
        await self._reader.close()

    def problem(self) -> str | None:
        """Why the spool refuses new mail now (disk space), or None: for health checks."""
        try:
            self._check_space()
        except SpoolUnavailable as exc:
            return exc.reason
        return None

    def _check_space(self) -> None:
        """Refuse new mail below ``min_free_bytes`` free (statvfs at most once a second)."""
        now = time.monotonic()
        if now - self._space_checked >= SPACE_CHECK_INTERVAL:
            self._space_checked = now
            try:
                free = shutil.disk_usage(self._data_dir).free
            except OSError as exc:
                self._space_problem = f"cannot stat the data directory: {exc.strerror}"
            else:
                low = free < self._min_free
                self._space_problem = "disk full" if low else None
        if self._space_problem is not None:
            raise SpoolUnavailable(self._space_problem)

    def _accept_rows(self, batch: AcceptBatch) -> _AcceptRows:
        tenant, created, expires = batch.tenant, batch.created_at, batch.expires_at
        kept = [m for m in batch.messages if m.recipients]
        body_id = next(self._body_ids) if kept else 0
        messages: list[Row] = []
        deliveries: list[Row] = []
        delivery_ids = self._delivery_ids
        for m in kept:
            mid, rcpts, due = next(self._message_ids), m.recipients, m.due_at
            pending = len(rcpts)
            messages.append(
                (mid, body_id, tenant, m.sg_message_id, m.smtp_id, m.personalization, pending)
            )
            deliveries += [
                (next(delivery_ids), mid, tenant, r, _domain(r), due, expires, created)
                for r in rcpts
            ]
        return _AcceptRows(
            (body_id, tenant, batch.body, len(kept)) if kept else None,
            messages,
            deliveries,
            [(e.ts, e.tenant, e.event, e.email, e.sg_message_id, e.data) for e in batch.events],
            sum(1 for e in batch.events if e.event == DROPPED),
        )


def _domain(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower()


# -- operations run by the writer thread, inside its transaction ----------------------------


def _executemany(statement: str, rows: list[Row], conn: sqlite3.Connection) -> None:
    conn.executemany(statement, rows)


def _insert(rows: _AcceptRows, conn: sqlite3.Connection) -> None:
    if rows.body is not None:
        conn.execute(sql.INSERT_BODY, rows.body)
        conn.executemany(sql.INSERT_MESSAGE, rows.messages)
        conn.executemany(sql.INSERT_DELIVERY, rows.deliveries)
    conn.executemany(sql.INSERT_EVENT, rows.events)
    if rows.dropped:
        conn.execute(sql.ADD_COUNTER, (rows.dropped, DROPPED))


def _lease(select: str, args: Row, until: float, conn: sqlite3.Connection) -> list[Lease]:
    rows = conn.execute(select, args).fetchall()
    conn.executemany(sql.MARK_LEASED, [(until, r[0]) for r in rows])
    return [Lease(*r) for r in rows]


_SettleItem = tuple[int, Settlement, float, Row | None, Row | None]


def _settle_item(s: Settle) -> _SettleItem:
    lease, ev = s.lease, s.event
    event = (ev.ts, ev.tenant, ev.event, ev.email, ev.sg_message_id, ev.data) if ev else None
    suppress = None
    if s.suppress is not None:
        list_name, reason, status = s.suppress
        when = ev.ts if ev else time.time()
        suppress = (lease.tenant, lease.rcpt.lower(), list_name, when, reason, status)
    return (lease.delivery_id, s.settlement, s.retry_at, event, suppress)


def _settle(items: list[_SettleItem], conn: sqlite3.Connection) -> None:
    """Settles of deliveries no longer in the spool (settled twice, e.g. after a lease
    timed out and was taken again) change nothing and append no event."""
    done: dict[int, int] = {}  # message id -> deliveries settled for good
    counters: dict[str, int] = {}
    events: list[Row] = []
    suppressions: list[Row] = []
    for delivery_id, settlement, retry_at, event, suppress in items:
        if settlement is Settlement.DEFERRED:
            if conn.execute(sql.DEFER, (retry_at, delivery_id)).rowcount == 0:
                continue
        else:
            row = conn.execute(sql.DELETE_DELIVERY, (delivery_id,)).fetchone()
            if row is None:
                continue
            done[row[0]] = done.get(row[0], 0) + 1
            counters[settlement.value] = counters.get(settlement.value, 0) + 1
        if event is not None:
            events.append(event)
        if suppress is not None:
            suppressions.append(suppress)
    _release_messages(conn, done)
    conn.executemany(sql.ADD_COUNTER, [(n, name) for name, n in counters.items()])
    conn.executemany(sql.INSERT_EVENT, events)
    conn.executemany(sql.UPSERT_SUPPRESSION, suppressions)


def _release_messages(conn: sqlite3.Connection, done: dict[int, int]) -> None:
    """Drop the messages nothing is pending for, then the bodies no message points to."""
    bodies: dict[int, int] = {}  # body id -> messages removed
    for message_id, n in done.items():
        row = conn.execute(sql.DELETE_MESSAGE_IF_DONE, (message_id, n)).fetchone()
        if row is None:
            conn.execute(sql.DECREMENT_MESSAGE, (n, message_id))
        else:
            bodies[row[0]] = bodies.get(row[0], 0) + 1
    for body_id, n in bodies.items():
        if conn.execute(sql.DELETE_BODY_IF_DONE, (body_id, n)).rowcount == 0:
            conn.execute(sql.DECREMENT_BODY, (n, body_id))


# -- reads, run by the reader thread inside one read transaction ---------------------------


def _load(message_ids: list[int], conn: sqlite3.Connection) -> list[StoredMessage]:
    """Messages in the order asked (missing ones left out); a body shared by many messages
    is read once and the same bytes object is handed to each of them."""
    found = {r[0]: r for r in sql.select_in(conn, sql.SELECT_MESSAGES, (), message_ids)}
    body_ids = sorted({r[1] for r in found.values()})
    bodies: dict[int, bytes] = dict(sql.select_in(conn, sql.SELECT_BODIES, (), body_ids))
    out = []
    for mid in message_ids:
        r = found.get(mid)
        if r is not None:
            out.append(StoredMessage(mid, r[2], r[3], r[4], bodies[r[1]], r[5]))
    return out


def _scalar(statement: str, args: Row, conn: sqlite3.Connection) -> Any:
    return conn.execute(statement, args).fetchone()[0]


def _queues(conn: sqlite3.Connection) -> list[QueueInfo]:
    infos = [QueueInfo(*r) for r in conn.execute(sql.SELECT_QUEUES)]
    return sorted(infos, key=lambda q: (q.tenant, q.domain))


def _counts(conn: sqlite3.Connection) -> Counts:
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


def _read_events(after: int, limit: int, conn: sqlite3.Connection) -> list[tuple[int, EventRecord]]:
    rows = conn.execute(sql.SELECT_EVENTS, (after, limit))
    return [(r[0], EventRecord(r[1], r[2], r[3], r[4], r[5], r[6])) for r in rows]


def _committed(consumer: str, conn: sqlite3.Connection) -> int:
    row = conn.execute(sql.SELECT_OFFSET, (consumer,)).fetchone()
    return int(row[0]) if row else 0


def _suppressed(tenant: str, emails: list[str], conn: sqlite3.Connection) -> dict[str, str]:
    lists: dict[str, set[str]] = {}
    for email, list_name in sql.select_in(conn, sql.SELECT_SUPPRESSED, (tenant,), emails):
        lists.setdefault(email, set()).add(list_name)
    out: dict[str, str] = {}
    for email, names in lists.items():
        reason = next((r for name, r in DROP_REASONS.items() if name in names), None)
        if reason is not None:
            out[email] = reason
    return out
