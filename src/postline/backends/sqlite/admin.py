"""The operator's writes to ``spool.db``: flush deferred mail, purge, unsuppress.

Run by the node itself when it is up (``postline.control``, on a thread with a
connection of its own, so the engine re-arms its queues and withdraws purged work from
its windows) and by the command line directly when no node runs. Each call takes the
write lock with ``BEGIN IMMEDIATE`` for one short transaction (purges go in chunks), so
the node's group-commit writer waits milliseconds at most.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postline.backends.sqlite import schema as sql
from postline.backends.sqlite.inspect import message_match
from postline.backends.sqlite.transactions import release_messages
from postline.model.domain import email_key
from postline.model.events import DROPPED, DROPPED_STATUS, EventRecord, make_event
from postline.model.mail import decode_body, decode_personalization
from postline.model.relay import decode_relay, is_raw

PURGE_REASON = "Purged by operator"
CHUNK = 1000  # deliveries per purge transaction: keeps the node's writer waiting briefly


def open_readwrite(data_dir: str | Path) -> sqlite3.Connection:
    path = Path(data_dir).resolve() / "spool.db"
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def flush(
    conn: sqlite3.Connection, now: float, domain: str | None = None
) -> dict[tuple[str, str], int]:
    """Make deferred deliveries due now; (tenant, domain) -> how many.

    Only deliveries that were attempted: mail scheduled with ``send_at`` keeps its time,
    and deliveries the node has leased are already on their way.
    """
    where, args = ("AND domain = ?", [domain.lower()]) if domain else ("", [])
    stmt = (
        "UPDATE deliveries SET due_at = ? WHERE leased = 0 AND attempts > 0 AND due_at > ?"
        f" {where} RETURNING tenant, domain"
    )
    queues: dict[tuple[str, str], int] = {}
    with _immediate(conn):
        for tenant, dom in conn.execute(stmt, [now, now, *args]):
            queues[(tenant, dom)] = queues.get((tenant, dom), 0) + 1
    return queues


@dataclass(slots=True)
class Purged:
    tenant: str
    sg_message_id: str
    rcpt: str
    domain: str
    created_at: float
    attempts: int


def purge(
    conn: sqlite3.Connection,
    now: float,
    *,
    domain: str | None = None,
    message: str | None = None,
    leased: bool = False,
    withdrawn: Sequence[int] = (),
) -> list[Purged]:
    """Remove pending deliveries of a domain or of a message, each with a ``dropped`` event
    (reason "Purged by operator"). Leased ones only when ``leased`` (no node runs) or when
    their id is in ``withdrawn`` (the node took them back from its windows)."""
    if (domain is None) == (message is None):
        raise ValueError("purge needs a domain or a message, not both")
    cond, args = _selector(domain, message)
    out: list[Purged] = []
    ids = list(withdrawn)
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        marks = ",".join("?" * len(chunk))
        out += _purge_chunk(conn, now, f"{cond} AND d.id IN ({marks})", [*args, *chunk])
    state = "" if leased else " AND d.leased = 0"
    while rows := _purge_chunk(conn, now, cond + state, args):
        out += rows
    return out


def _selector(domain: str | None, message: str | None) -> tuple[str, list[Any]]:
    if domain is not None:
        return "d.domain = ?", [domain.lower()]
    assert message is not None
    cond, args = message_match(message)
    return cond.format(col="m.sg_message_id"), list(args)


_SELECT = (
    "SELECT d.id, d.message_id, d.tenant, d.rcpt, d.domain, d.created_at, d.attempts,"
    " m.sg_message_id, m.smtp_id, m.personalization, b.data FROM deliveries d"
    " JOIN messages m ON m.id = d.message_id JOIN bodies b ON b.id = m.body_id"
    " WHERE {cond} ORDER BY d.id LIMIT {limit}"
)


def _purge_chunk(conn: sqlite3.Connection, now: float, cond: str, args: list[Any]) -> list[Purged]:
    with _immediate(conn):
        rows = conn.execute(_SELECT.format(cond=cond, limit=CHUNK), args).fetchall()
        done: dict[int, int] = {}
        events: list[EventRecord] = []
        meta: dict[int, tuple[list[str] | None, dict[str, str] | None]] = {}
        for r in rows:
            conn.execute("DELETE FROM deliveries WHERE id = ?", (r[0],))
            done[r[1]] = done.get(r[1], 0) + 1
            if r[1] not in meta:
                meta[r[1]] = _meta(r[10], r[9])
            events.append(_dropped_event(r, meta[r[1]], now))
        release_messages(conn, done)
        conn.executemany(sql.INSERT_EVENT, [sql.event_row(e) for e in events])
        if rows:
            conn.execute(sql.ADD_COUNTER, (len(rows), DROPPED))
    return [Purged(r[2], r[7], r[3], r[4], r[5], r[6]) for r in rows]


def _meta(body: bytes, personalization: bytes) -> tuple[list[str] | None, dict[str, str] | None]:
    """Categories and custom args the message's events carry (as the engine's do)."""
    if is_raw(body):  # relayed over SMTP: they are in its per-message part
        relay = decode_relay(personalization)
        return relay.categories, relay.unique_args
    b, p = decode_body(body), decode_personalization(personalization)
    args = {**(b.custom_args or {}), **(p.custom_args or {})}
    return b.categories, args or None


def _dropped_event(
    r: Any, meta: tuple[list[str] | None, dict[str, str] | None], now: float
) -> EventRecord:
    return make_event(
        DROPPED,
        tenant=r[2],
        email=r[3],
        ts=now,
        sg_message_id=r[7],
        smtp_id=r[8],
        categories=meta[0],
        custom_args=meta[1],
        extra={"reason": PURGE_REASON, "status": DROPPED_STATUS},
    )


def remove_suppression(
    conn: sqlite3.Connection, email: str, tenant: str, list_name: str | None = None
) -> list[str]:
    """Take an address off a tenant's suppression lists (one, or all); the lists it was on."""
    stmt = "DELETE FROM suppressions WHERE tenant = ? AND email = ?"
    args: list[Any] = [tenant, email_key(email)]
    if list_name is not None:
        stmt += " AND list = ?"
        args.append(list_name)
    with _immediate(conn):
        return sorted(r[0] for r in conn.execute(stmt + " RETURNING list", args))


class _immediate:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): one write transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
