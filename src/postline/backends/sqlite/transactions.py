"""What the embedded spool's writer thread runs inside its group's transaction (spool.py
builds the rows on the caller's side and hands these functions to writer.py): inserts of
an accepted batch, leases, settles, releases, suppressions and event pruning."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from postline.backends.sqlite import bodyfile
from postline.backends.sqlite import schema as sql
from postline.model.domain import email_key
from postline.model.events import DROPPED
from postline.spool.interface import BodyFile, Lease, Settle, Settlement

Row = tuple[Any, ...]


@dataclass(slots=True)
class AcceptRows:
    body: Row | None  # (id, tenant, data or, with body_file, its size, refs)
    messages: list[Row]
    deliveries: list[Row]
    events: list[Row]
    dropped: int
    body_file: BodyFile | None = None  # only when a body is stored


def executemany(statement: str, rows: list[Row], conn: sqlite3.Connection) -> None:
    conn.executemany(statement, rows)


def insert_rows(rows: AcceptRows, conn: sqlite3.Connection) -> ValueError | None:
    if rows.body_file is None or rows.body is None:
        insert(rows, conn)
        return None
    problem = bodyfile.insert(rows.body, rows.body_file, conn)
    if problem is None:
        insert_rest(rows, conn)
    return problem


def insert(rows: AcceptRows, conn: sqlite3.Connection) -> None:
    if rows.body is not None:
        conn.execute(sql.INSERT_BODY, rows.body)
    insert_rest(rows, conn)


def insert_rest(rows: AcceptRows, conn: sqlite3.Connection) -> None:
    if rows.body is not None:
        conn.executemany(sql.INSERT_MESSAGE, rows.messages)
        conn.executemany(sql.INSERT_DELIVERY, rows.deliveries)
    conn.executemany(sql.INSERT_EVENT, rows.events)
    if rows.dropped:
        conn.execute(sql.ADD_COUNTER, (rows.dropped, DROPPED))


def record(events: list[Row], suppressions: list[Row], conn: sqlite3.Connection) -> None:
    conn.executemany(sql.INSERT_EVENT, events)
    conn.executemany(sql.UPSERT_SUPPRESSION, suppressions)


def lease(select: str, args: Row, until: float, conn: sqlite3.Connection) -> list[Lease]:
    rows = conn.execute(select, args).fetchall()
    conn.executemany(sql.MARK_LEASED, [(until, r[0]) for r in rows])
    return [Lease(*r) for r in rows]


SettleItem = tuple[int, Settlement, float, Row | None, Row | None]


def settle_item(s: Settle) -> SettleItem:
    lease, ev = s.lease, s.event
    event = sql.event_row(ev) if ev else None
    suppress = None
    if s.suppress is not None:
        list_name, reason, status = s.suppress
        when = ev.ts if ev else time.time()
        suppress = (lease.tenant, email_key(lease.rcpt), list_name, when, reason, status)
    return (lease.delivery_id, s.settlement, s.retry_at, event, suppress)


def settle(items: list[SettleItem], conn: sqlite3.Connection) -> None:
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
    release_messages(conn, done)
    conn.executemany(sql.ADD_COUNTER, [(n, name) for name, n in counters.items()])
    conn.executemany(sql.INSERT_EVENT, events)
    conn.executemany(sql.UPSERT_SUPPRESSION, suppressions)


def release_messages(conn: sqlite3.Connection, done: dict[int, int]) -> None:
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


_DELETE_SUPPRESSIONS = "DELETE FROM suppressions WHERE tenant = ? AND list = ?"


def remove_suppressions(
    tenant: str, list_name: str, emails: list[str] | None, conn: sqlite3.Connection
) -> int:
    if emails is None:
        return conn.execute(_DELETE_SUPPRESSIONS, (tenant, list_name)).rowcount
    some = _DELETE_SUPPRESSIONS + " AND email IN ({}) RETURNING email"
    return len(sql.select_in(conn, some, (tenant, list_name), emails))


def prune_events(upto: int, before: float, limit: int, conn: sqlite3.Connection) -> int:
    """The oldest events (offset order) that are consumed and older than ``before``."""
    offsets = [r[0] for r in conn.execute(sql.SELECT_PRUNABLE, (upto, before, limit))]
    if not offsets:
        return 0
    return conn.execute(sql.DELETE_EVENTS, (offsets[0], offsets[-1], before)).rowcount
