"""The layout of ``spool.db`` and every statement run against it, on one screen.

Indexes: only ``deliveries(domain, tenant, due_at)`` (lease, queues) and
``deliveries(expires_at)`` (expire). Both keys are small or time-ordered, so an insert
touches the right-hand pages of the B-trees only; a random-key index (e.g. on ``rcpt``)
dirties a page per row and cost 7x in commit throughput (shared engines.md, section 3).
``suppressions`` is keyed (tenant, email, list): the accept stage looks addresses up by
email, whatever the list; it is written at bounce rate, not at accept rate.

Row ids of bodies, messages and deliveries are assigned by the spool (one writer process),
so a whole batch is inserted with ``executemany`` without reading ids back.

``bodies.data`` is the last column: a body streamed from a file is inserted as
``zeroblob(size)`` and filled through the incremental blob API, and SQLite builds a record
with a zeroblob lazily only when nothing follows the blob; with ``refs`` (>= 2) after it, it
allocates and zeroes the whole size first (a 30 MB body shared by 3 messages: +63 MB peak
RSS, against +3 MB with ``data`` last; tests/integration/test_spool_body_file.py). Files
made with the older order are rebuilt at the owner's start while their bodies are small
(:func:`reorder_bodies`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from postline.model.events import EventRecord

VERSION = 3  # 2: events.meta; 3: asm_groups, asm_members (created by the DDL)
INCREMENTAL = 2  # PRAGMA auto_vacuum value
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # bytes the WAL is cut back to after a checkpoint
BUSY_TIMEOUT_MS = 5000

BODIES = """
CREATE TABLE IF NOT EXISTS bodies (
  id INTEGER PRIMARY KEY,
  tenant TEXT NOT NULL,
  refs INTEGER NOT NULL,             -- messages still pointing here
  data BLOB NOT NULL                 -- last: see the module docstring
);
"""
DDL = f"""{BODIES}
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY,
  body_id INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  sg_message_id TEXT NOT NULL,
  smtp_id TEXT NOT NULL,
  personalization BLOB NOT NULL,
  pending INTEGER NOT NULL           -- deliveries not yet settled for good
);
CREATE TABLE IF NOT EXISTS deliveries (
  id INTEGER PRIMARY KEY,
  message_id INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  rcpt TEXT NOT NULL,
  domain TEXT NOT NULL,
  due_at REAL NOT NULL,              -- when leased: the end of the visibility timeout
  expires_at REAL NOT NULL,
  created_at REAL NOT NULL,
  attempts INTEGER NOT NULL,
  leased INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (domain, tenant, due_at);
CREATE INDEX IF NOT EXISTS deliveries_expiry ON deliveries (expires_at);
CREATE TABLE IF NOT EXISTS events (
  offset INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
  ts REAL NOT NULL,
  tenant TEXT NOT NULL,
  event TEXT NOT NULL,
  email TEXT NOT NULL,
  sg_message_id TEXT NOT NULL,
  data BLOB NOT NULL,
  meta BLOB NOT NULL DEFAULT x''     -- EventRecord.meta (activity-only fields)
);
CREATE TABLE IF NOT EXISTS consumers (
  name TEXT PRIMARY KEY,
  offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppressions (
  tenant TEXT NOT NULL,
  email TEXT NOT NULL,               -- lower-cased
  list TEXT NOT NULL,                -- bounces, blocks, spam_reports, unsubscribes, invalid_emails
  created REAL NOT NULL,
  reason TEXT NOT NULL,
  status TEXT NOT NULL,
  PRIMARY KEY (tenant, email, list)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS asm_groups (  -- unsubscribe groups (api/asm_groups.py)
  id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a deleted group's id names nothing
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  description TEXT NOT NULL,
  is_default INTEGER NOT NULL,
  UNIQUE (tenant, name)
);
CREATE TABLE IF NOT EXISTS asm_members (  -- addresses unsubscribed from a group
  tenant TEXT NOT NULL,
  email TEXT NOT NULL,               -- lower-cased
  group_id INTEGER NOT NULL,
  created REAL NOT NULL,
  PRIMARY KEY (tenant, group_id, email)  -- the accept-time lookup and a group's listing
) WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value)
  VALUES ('delivered', 0), ('bounced', 0), ('expired', 0), ('dropped', 0);
"""

# accept
INSERT_BODY = "INSERT INTO bodies (id, tenant, data, refs) VALUES (?, ?, ?, ?)"
INSERT_BODY_SIZED = "INSERT INTO bodies (id, tenant, data, refs) VALUES (?, ?, zeroblob(?), ?)"
INSERT_MESSAGE = (
    "INSERT INTO messages (id, body_id, tenant, sg_message_id, smtp_id, personalization, pending)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, message_id, tenant, rcpt, domain, due_at, expires_at,"
    " created_at, attempts, leased) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)"
)
INSERT_EVENT = (
    "INSERT INTO events (ts, tenant, event, email, sg_message_id, data, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
ADD_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ?"

# lease / release / expire (the joined sg_message_id comes through the primary key)
_LEASE_COLS = (
    "SELECT d.id, d.message_id, d.tenant, d.rcpt, d.domain, d.attempts, d.created_at,"
    " d.expires_at, m.sg_message_id FROM deliveries d JOIN messages m ON m.id = d.message_id"
)
SELECT_DUE = (
    f"{_LEASE_COLS} WHERE d.domain = ? AND d.tenant = ? AND d.due_at <= ?"
    " ORDER BY d.due_at, d.id LIMIT ?"
)
SELECT_EXPIRED = (
    f"{_LEASE_COLS} WHERE d.expires_at <= ? AND (d.leased = 0 OR d.due_at <= ?)"
    " ORDER BY d.expires_at, d.id LIMIT ?"
)
MARK_LEASED = "UPDATE deliveries SET due_at = ?, leased = 1 WHERE id = ?"
RELEASE = "UPDATE deliveries SET due_at = ?, leased = 0 WHERE id = ?"
RECOVER = "UPDATE deliveries SET due_at = ?, leased = 0 WHERE leased = 1"

# settle
DEFER = "UPDATE deliveries SET due_at = ?, attempts = attempts + 1, leased = 0 WHERE id = ?"
DELETE_DELIVERY = "DELETE FROM deliveries WHERE id = ? RETURNING message_id"
DELETE_MESSAGE_IF_DONE = "DELETE FROM messages WHERE id = ? AND pending <= ? RETURNING body_id"
DECREMENT_MESSAGE = "UPDATE messages SET pending = pending - ? WHERE id = ?"
DELETE_BODY_IF_DONE = "DELETE FROM bodies WHERE id = ? AND refs <= ?"
DECREMENT_BODY = "UPDATE bodies SET refs = refs - ? WHERE id = ?"
UPSERT_SUPPRESSION = (
    "INSERT INTO suppressions (tenant, email, list, created, reason, status)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, email, list) DO UPDATE"
    " SET created = excluded.created, reason = excluded.reason, status = excluded.status"
)
COMMIT_OFFSET = (
    "INSERT INTO consumers (name, offset) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET offset = excluded.offset"
)

# reads
SELECT_MESSAGES = (
    "SELECT id, body_id, sg_message_id, smtp_id, tenant, personalization FROM messages"
    " WHERE id IN ({})"
)
# Bodies above ? octets come back as NULL and are read with blobopen (reader.py): a SELECT
# of a 30 MB blob makes SQLite build its own full copy before Python's (+62 MB RSS for
# 30 MB, measured), the blob handle reads straight into the bytes object (+32 MB).
SELECT_BODIES = (
    "SELECT id, CASE WHEN length(data) > ? THEN NULL ELSE data END FROM bodies WHERE id IN ({})"
)
SELECT_QUEUES = (
    "SELECT tenant, domain, min(due_at), count(*) FROM deliveries GROUP BY domain, tenant"
)
SELECT_NEXT_DUE = "SELECT min(due_at) FROM deliveries WHERE domain = ? AND tenant = ?"
SELECT_STATES = "SELECT leased, attempts > 0, count(*) FROM deliveries GROUP BY 1, 2"
SELECT_BY_DOMAIN = "SELECT domain, count(*) FROM deliveries GROUP BY domain"
SELECT_COUNTERS = "SELECT name, value FROM counters"
SELECT_SIZES = (
    "SELECT (SELECT count(*) FROM bodies), (SELECT count(*) FROM messages),"
    " (SELECT count(*) FROM events)"
)
SELECT_EVENTS = (
    "SELECT offset, ts, tenant, event, email, sg_message_id, data, meta FROM events"
    " WHERE offset > ? ORDER BY offset LIMIT ?"
)
SELECT_OFFSET = "SELECT offset FROM consumers WHERE name = ?"
SELECT_HEAD = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
SELECT_PRUNABLE = "SELECT offset FROM events WHERE offset <= ? AND ts < ? ORDER BY offset LIMIT ?"
DELETE_EVENTS = "DELETE FROM events WHERE offset >= ? AND offset <= ? AND ts < ?"
SELECT_SUPPRESSED = "SELECT email, list FROM suppressions WHERE tenant = ? AND email IN ({})"
MAX_IDS = (
    "SELECT (SELECT coalesce(max(id), 0) FROM bodies), (SELECT coalesce(max(id), 0) FROM messages),"
    " (SELECT coalesce(max(id), 0) FROM deliveries)"
)

CHUNK = 500  # ids per IN (...) list; SQLite allows 32766 variables


def select_in(
    conn: sqlite3.Connection, statement: str, head: tuple[Any, ...], keys: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` (with ``IN ({})``) over ``keys`` in chunks; concatenate the rows."""
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        rows += conn.execute(statement.format(",".join("?" * len(chunk))), (*head, *chunk))
    return rows


def configure(conn: sqlite3.Connection, *, fsync: bool) -> None:
    """Pragmas of the write connection. FULL syncs the WAL at every commit (durable);
    NORMAL survives a process crash but may lose the last commits on power loss.

    ``auto_vacuum`` only takes on a file without tables, so it comes first (an older file
    is converted by compact.py); ``journal_size_limit`` cuts the WAL back to that size
    whenever it restarts after a checkpoint."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA temp_store=MEMORY")


def create(conn: sqlite3.Connection) -> None:
    """Create the tables (idempotent) and stamp the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > VERSION:
        raise RuntimeError(f"spool.db has schema version {version}; this build knows {VERSION}")
    if version == VERSION:
        return  # nothing to write: a reader process opening a live spool takes no write lock
    upgrade = ""
    if version == 1:  # version 1 had no events.meta
        upgrade = "ALTER TABLE events ADD COLUMN meta BLOB NOT NULL DEFAULT x'';"
    conn.executescript(f"BEGIN IMMEDIATE; {upgrade} {DDL} PRAGMA user_version={VERSION}; COMMIT;")


def event_row(e: EventRecord) -> tuple[float, str, str, str, str, bytes, bytes]:
    """An event as INSERT_EVENT's parameters."""
    return (e.ts, e.tenant, e.event, e.email, e.sg_message_id, e.data, e.meta)


def data_is_last(conn: sqlite3.Connection) -> bool:
    """Whether ``bodies`` has the layout of this build (``data`` last)."""
    columns: list[str] = [row[1] for row in conn.execute("PRAGMA table_info(bodies)")]
    return columns[-1] == "data"


def body_bytes(conn: sqlite3.Connection) -> int:
    """Octets of all stored bodies (``length`` of a blob reads no overflow page)."""
    return int(conn.execute("SELECT coalesce(sum(length(data)), 0) FROM bodies").fetchone()[0])


def reorder_bodies(conn: sqlite3.Connection) -> None:
    """Rebuild ``bodies`` of an older file with ``data`` last, in one transaction (it copies
    every body: the caller decides whether they are few enough)."""
    conn.executescript(
        "BEGIN IMMEDIATE; ALTER TABLE bodies RENAME TO bodies_before;"
        f"{BODIES} INSERT INTO bodies (id, tenant, refs, data)"
        " SELECT id, tenant, refs, data FROM bodies_before; DROP TABLE bodies_before; COMMIT;"
    )
