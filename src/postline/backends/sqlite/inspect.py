"""Read-only views of ``spool.db`` for the operator's commands (``postline status``...).

The connection is opened ``mode=ro``: it never writes and never takes a write lock, so it
runs beside a live node (WAL readers do not block the writer, nor it them) and works on a
stopped node's data directory as well. Every function reads inside one transaction, so
the figures it returns are one consistent snapshot.

Costs: the queue views scan ``deliveries`` (pending work only); ``message`` scans
``messages`` and ``events`` because neither has an index on ``sg_message_id`` (a
random-key index costs the accept path 7x in commit throughput, see schema.py), which
is fine for a command an operator types, not for an API.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postline.backends.sqlite import schema as sql
from postline.model.domain import email_key

# Age buckets of the queue shape, in minutes: Postfix qshape's doubling columns.
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


class NoSpool(Exception):
    """No spool to read: the message names the path that was looked at."""


def open_readonly(data_dir: str | Path) -> sqlite3.Connection:
    path = Path(data_dir).resolve() / "spool.db"
    if not path.exists():
        raise NoSpool(
            f"no spool at {path}: no node has run with this data directory yet "
            "(start one with `postline serve`, or pass the --config FILE the node uses)"
        )
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _snapshot(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")


@dataclass(slots=True)
class DomainQueue:
    """One destination domain's pending deliveries, qshape-style."""

    domain: str
    total: int = 0
    due: int = 0  # may go now (waiting for a window slot or a connection)
    deferred: int = 0  # waiting for their retry time
    scheduled: int = 0  # never attempted, send_at in the future
    inflight: int = 0  # leased by the node (in a window or being sent)
    oldest: float = 0.0  # created_at of the oldest delivery
    next_retry: float | None = None  # earliest due_at of the deferred ones
    tenants: list[str] = field(default_factory=list)
    ages: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))


def _bucket_sql() -> str:
    whens = " ".join(f"WHEN ? - created_at < {m * 60} THEN {i}" for i, m in enumerate(AGE_BUCKETS))
    return f"CASE {whens} ELSE {len(AGE_BUCKETS)} END"


_SHAPE = (
    "SELECT domain, tenant, leased, attempts > 0, due_at <= ?, "
    f"{_bucket_sql()}, count(*), min(created_at), min(due_at) FROM deliveries"
    " {where} GROUP BY 1, 2, 3, 4, 5, 6"
)


def queue_shape(
    conn: sqlite3.Connection, now: float, domain: str | None = None
) -> list[DomainQueue]:
    """Pending deliveries per destination domain, largest first."""
    where, args = ("WHERE domain = ?", [domain.lower()]) if domain else ("", [])
    params = [now, *([now] * len(AGE_BUCKETS)), *args]
    out: dict[str, DomainQueue] = {}
    for dom, tenant, leased, retried, due, bucket, n, oldest, first_due in conn.execute(
        _SHAPE.format(where=where), params
    ):
        q = out.get(dom) or out.setdefault(dom, DomainQueue(dom, oldest=oldest))
        _add(q, tenant, leased, retried, due, bucket, n, oldest, first_due)
    return sorted(out.values(), key=lambda q: (-q.total, q.domain))


def _add(q: DomainQueue, tenant: str, leased: int, retried: int, due: int, bucket: int,
         n: int, oldest: float, first_due: float) -> None:  # fmt: skip
    q.total += n
    q.ages[bucket] += n
    q.oldest = min(q.oldest, oldest)
    if tenant not in q.tenants:
        q.tenants.append(tenant)
    if leased:
        q.inflight += n
    elif due:
        q.due += n
    elif retried:
        q.deferred += n
        q.next_retry = first_due if q.next_retry is None else min(q.next_retry, first_due)
    else:
        q.scheduled += n


@dataclass(slots=True)
class PendingDelivery:
    delivery_id: int
    sg_message_id: str
    tenant: str
    rcpt: str
    domain: str
    attempts: int
    leased: bool
    due_at: float
    created_at: float
    expires_at: float

    def state(self, now: float) -> str:
        if self.leased:
            return "in flight"
        if self.due_at <= now:
            return "due"
        return "deferred" if self.attempts else "scheduled"


_PENDING = (
    "SELECT d.id, m.sg_message_id, d.tenant, d.rcpt, d.domain, d.attempts, d.leased, d.due_at,"
    " d.created_at, d.expires_at FROM deliveries d JOIN messages m ON m.id = d.message_id"
)


def pending_in_domain(conn: sqlite3.Connection, domain: str, limit: int) -> list[PendingDelivery]:
    """The domain's pending deliveries, oldest first (like ``mailq``)."""
    sql = f"{_PENDING} WHERE d.domain = ? ORDER BY d.created_at, d.id LIMIT ?"
    return [PendingDelivery(*r) for r in conn.execute(sql, (domain.lower(), limit))]


def message_match(ident: str) -> tuple[str, tuple[str, str, str]]:
    """SQL condition on a ``sg_message_id`` column ``{col}``: the id itself, or every
    personalization of an X-Message-Id (``<id>.<node>.<i>``, a range: '.' < '/')."""
    return "({col} = ? OR ({col} >= ? AND {col} < ?))", (ident, f"{ident}.", f"{ident}/")


def pending_of_message(conn: sqlite3.Connection, ident: str) -> list[PendingDelivery]:
    cond, args = message_match(ident)
    sql = f"{_PENDING} WHERE {cond.format(col='m.sg_message_id')} ORDER BY m.id, d.id"
    return [PendingDelivery(*r) for r in conn.execute(sql, args)]


def count_inflight(conn: sqlite3.Connection, domain: str | None, message: str | None) -> int:
    """Leased deliveries of a domain or a message (held by the node: being sent)."""
    if domain is not None:
        return sum(q.inflight for q in queue_shape(conn, 0.0, domain))
    return sum(1 for d in pending_of_message(conn, message or "") if d.leased)


@dataclass(slots=True)
class StoredEvent:
    offset: int
    ts: float
    tenant: str
    event: str
    email: str
    sg_message_id: str
    data: bytes


def events_of_message(conn: sqlite3.Connection, ident: str) -> list[StoredEvent]:
    cond, args = message_match(ident)
    sql = (
        "SELECT offset, ts, tenant, event, email, sg_message_id, data FROM events"
        f" WHERE {cond.format(col='sg_message_id')} ORDER BY offset"
    )
    return [StoredEvent(*r) for r in conn.execute(sql, args)]


@dataclass(slots=True)
class MessageView:
    pending: list[PendingDelivery]
    events: list[StoredEvent]


def message(conn: sqlite3.Connection, ident: str) -> MessageView:
    """What the spool knows of one request (X-Message-Id) or one message (sg_message_id)."""
    _snapshot(conn)
    try:
        return MessageView(pending_of_message(conn, ident), events_of_message(conn, ident))
    finally:
        conn.execute("COMMIT")


@dataclass(slots=True)
class Suppression:
    tenant: str
    email: str
    list: str
    created: float
    reason: str
    status: str


def suppressions(
    conn: sqlite3.Connection, tenant: str | None = None, email: str | None = None
) -> list[Suppression]:
    conds, args = [], []
    if tenant is not None:
        conds.append("tenant = ?")
        args.append(tenant)
    if email is not None:
        conds.append("email = ?")
        args.append(email_key(email))
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    sql = f"SELECT tenant, email, list, created, reason, status FROM suppressions{where}"
    return [Suppression(*r) for r in conn.execute(sql + " ORDER BY created DESC", args)]


@dataclass(slots=True)
class Totals:
    counters: dict[str, int]
    events: int  # highest event offset (the log's end)
    consumers: dict[str, tuple[int, float | None]]  # name -> (events behind, oldest unread ts)
    last_event: float | None  # when the newest event happened


def totals(conn: sqlite3.Connection) -> Totals:
    _snapshot(conn)
    try:
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        row: Any = conn.execute(
            "SELECT offset, ts FROM events ORDER BY offset DESC LIMIT 1"
        ).fetchone()
        last = row[1] if row else None
        end = int(conn.execute(sql.SELECT_HEAD).fetchone()[0])  # pruning does not lower it
        lags: dict[str, tuple[int, float | None]] = {}
        for name, off in conn.execute("SELECT name, offset FROM consumers").fetchall():
            unread = conn.execute(
                "SELECT ts FROM events WHERE offset > ? ORDER BY offset LIMIT 1", (off,)
            ).fetchone()
            lags[name] = (max(0, end - off), unread[0] if unread else None)
        return Totals(counters, end, lags, last)
    finally:
        conn.execute("COMMIT")
