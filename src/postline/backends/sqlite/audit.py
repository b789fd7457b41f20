"""The audit's reads of spool.db (ops/audit.py), all inside one read snapshot."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from postline.model.domain import email_key

Row = tuple[int, float, str, str, str, str]

SELECT_EVENTS = "SELECT offset, ts, tenant, event, email, sg_message_id FROM events ORDER BY offset"
SELECT_EVENTS_SINCE = (
    "SELECT offset, ts, tenant, event, email, sg_message_id FROM events"
    " WHERE offset >= coalesce((SELECT min(offset) FROM events WHERE ts >= ?), 1 << 62)"
    " ORDER BY offset"
)
SELECT_QUEUED = (
    "SELECT m.sg_message_id, d.rcpt FROM deliveries d JOIN messages m ON m.id = d.message_id"
)


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Every read inside sees the spool as of the first one (WAL read transaction)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def events(conn: sqlite3.Connection, since: float | None) -> Iterator[Row]:
    if since is None:
        yield from conn.execute(SELECT_EVENTS)
    else:
        yield from conn.execute(SELECT_EVENTS_SINCE, (since,))


def queued(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    return {(msg, email_key(rcpt)) for msg, rcpt in conn.execute(SELECT_QUEUED)}


def oldest_event(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT ts FROM events ORDER BY offset LIMIT 1").fetchone()
    return float(row[0]) if row else None


def offsets(conn: sqlite3.Connection) -> dict[str, int]:
    """Every consumer's committed offset."""
    return {name: int(off) for name, off in conn.execute("SELECT name, offset FROM consumers")}
