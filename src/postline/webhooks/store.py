"""``<data_dir>/webhooks.db``: webhook settings, dead letters, the delivery ledger, replays.

SQLite in WAL mode with ``synchronous=FULL``: a dead letter must be on disk before the
dispatcher's offset moves past its events. One connection, used on one thread of its own
(:meth:`WebhookStore.run`), so an fsync never stalls the event loop. Writes are small: a
settings change, one ledger update per posted batch, one row per dead-lettered batch.

Tables (the layout on one screen):

* ``webhooks``: one row per webhook (``seq`` orders them: the legacy single-webhook API
  acts on a tenant's oldest), its event types as a comma list of the settings names, the
  P-256 key (PKCS#8 DER) once signing was first enabled, ``start_offset`` (the log's head
  at creation: a new webhook gets no history).
* ``ledger``: what the dispatcher did with each range of log offsets it posted:
  ``(webhook_id, first_offset, last_offset, count, status, source, at)``, ``status``
  ``delivered`` or ``dead``. Every event of the webhook's tenant and types whose offset
  lies in a ``delivered`` range was posted (and acknowledged with a 2xx); in a ``dead``
  range it went to ``dead_letters``. A run of delivered batches is one row (the newest
  ``live`` row grows), so the ledger stays small. ``source`` is ``live`` or
  ``dead_letters`` (a dead letter replayed later).
* ``dead_letters``: batches that still failed ``max_age`` after their oldest event:
  the body exactly as posted, its offsets and event count, the last failure.
* ``replays``: replay jobs and their counts (``POST /v3/user/webhooks/event/replay``).

``postline audit`` reads this file through audit_view.py (read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from postline.webhooks.settings import SETTING_EVENTS, Webhook

P = ParamSpec("P")
T = TypeVar("T")

FILE = "webhooks.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    types TEXT NOT NULL,
    friendly_name TEXT,
    oauth_client_id TEXT,
    oauth_client_secret TEXT,
    oauth_token_url TEXT,
    signed INTEGER NOT NULL,
    private_key BLOB,
    public_key TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks(tenant, seq);
CREATE TABLE IF NOT EXISTS ledger(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_webhook ON ledger(webhook_id, seq);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_webhook ON dead_letters(webhook_id, id);
CREATE TABLE IF NOT EXISTS replays(
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    events INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    finished REAL
);
"""

HOOK_COLUMNS = (
    "id, tenant, url, enabled, types, friendly_name, oauth_client_id, oauth_client_secret, "
    "oauth_token_url, signed, private_key, public_key, start_offset, created, updated"
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    webhook_id: str
    first_offset: int
    last_offset: int
    count: int
    body: bytes
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Replay:
    id: str
    tenant: str
    webhook_id: str
    kind: str  # "window" or "dead_letters"
    request: str  # the request's JSON
    status: str  # running, done, failed, interrupted
    events: int
    batches: int
    failed: int
    error: str
    created: float
    finished: float | None


def hook_from_row(row: tuple[Any, ...]) -> Webhook:
    (id_, tenant, url, enabled, types, name, cid, secret, token_url) = row[:9]
    (signed, key, public, start, created, updated) = row[9:]
    return Webhook(
        id=str(id_),
        tenant=str(tenant),
        url=str(url),
        enabled=bool(enabled),
        types=frozenset(t for t in str(types).split(",") if t in SETTING_EVENTS),
        friendly_name=None if name is None else str(name),
        oauth_client_id=None if cid is None else str(cid),
        oauth_client_secret=None if secret is None else str(secret),
        oauth_token_url=None if token_url is None else str(token_url),
        signed=bool(signed),
        private_key=None if key is None else bytes(key),
        public_key=str(public),
        start_offset=int(start),
        created=float(created),
        updated=float(updated),
    )


def _hook_values(h: Webhook) -> tuple[object, ...]:
    types = ",".join(sorted(h.types))
    return (
        h.id, h.tenant, h.url, int(h.enabled), types, h.friendly_name, h.oauth_client_id,
        h.oauth_client_secret, h.oauth_token_url, int(h.signed), h.private_key, h.public_key,
        h.start_offset, h.created, h.updated,
    )  # fmt: skip


class WebhookDb:
    """The synchronous store; every call runs on the store's thread (WebhookStore.run)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(_SCHEMA)

    # -- settings -------------------------------------------------------------------------

    def insert(self, hook: Webhook) -> None:
        marks = ",".join("?" * 15)
        self.conn.execute(
            f"INSERT INTO webhooks({HOOK_COLUMNS}) VALUES ({marks})", _hook_values(hook)
        )

    def update(self, hook: Webhook) -> None:
        names = HOOK_COLUMNS.split(", ")[1:]
        sets = ", ".join(f"{n} = ?" for n in names)
        values = _hook_values(hook)
        self.conn.execute(f"UPDATE webhooks SET {sets} WHERE id = ?", (*values[1:], hook.id))

    def delete(self, hook_id: str) -> None:
        tables = (("webhooks", "id"), ("ledger", "webhook_id"), ("dead_letters", "webhook_id"))
        with self._transaction():
            for table, column in tables:
                self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (hook_id,))

    def get(self, tenant: str, hook_id: str) -> Webhook | None:
        sql = f"SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = ? AND tenant = ?"
        row = self.conn.execute(sql, (hook_id, tenant)).fetchone()
        return None if row is None else hook_from_row(row)

    def tenant_hooks(self, tenant: str) -> list[Webhook]:
        sql = f"SELECT {HOOK_COLUMNS} FROM webhooks WHERE tenant = ? ORDER BY seq"
        return [hook_from_row(r) for r in self.conn.execute(sql, (tenant,))]

    def enabled(self) -> list[Webhook]:
        sql = f"SELECT {HOOK_COLUMNS} FROM webhooks WHERE enabled = 1 ORDER BY seq"
        return [hook_from_row(r) for r in self.conn.execute(sql)]

    # -- the ledger -----------------------------------------------------------------------

    def resume_offset(self, hook_id: str) -> int:
        """Where the dispatcher goes on: past the newest range it posted or dead-lettered."""
        row = self.conn.execute(
            "SELECT MAX(last_offset) FROM ledger WHERE webhook_id = ? AND source = 'live'",
            (hook_id,),
        ).fetchone()
        start = self.conn.execute(
            "SELECT start_offset FROM webhooks WHERE id = ?", (hook_id,)
        ).fetchone()
        return max(int(row[0] or 0), int(start[0]) if start else 0)

    def delivered(self, hook_id: str, first: int, last: int, count: int, now: float) -> None:
        """A live batch was posted: grow the newest live delivered row, or start one."""
        newest = self.conn.execute(
            "SELECT seq, status, source, last_offset FROM ledger WHERE webhook_id = ? "
            "ORDER BY seq DESC LIMIT 1",
            (hook_id,),
        ).fetchone()
        if newest is not None and newest[1:3] == ("delivered", "live") and newest[3] < first:
            self.conn.execute(
                "UPDATE ledger SET last_offset = ?, count = count + ?, at = ? WHERE seq = ?",
                (last, count, now, newest[0]),
            )
            return
        self._ledger(hook_id, first, last, count, "delivered", "live", now)

    def dead(
        self, hook: Webhook, first: int, last: int, count: int, body: bytes, reason: str, now: float
    ) -> None:
        """A live batch failed past max_age: the dead letter and its ledger row at once."""
        with self._transaction():
            self.conn.execute(
                "INSERT INTO dead_letters(webhook_id, tenant, first_offset, last_offset, count,"
                " body, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (hook.id, hook.tenant, first, last, count, body, reason, now),
            )
            self._ledger(hook.id, first, last, count, "dead", "live", now)

    def _ledger(self, *row: object) -> None:
        self.conn.execute(
            "INSERT INTO ledger(webhook_id, first_offset, last_offset, count, status, source, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    # -- dead letters ---------------------------------------------------------------------

    def dead_letters(
        self, tenant: str, hook_id: str | None, limit: int, offset: int, ids: list[int] | None
    ) -> list[DeadLetter]:
        sql = (
            "SELECT id, webhook_id, first_offset, last_offset, count, body, reason, at "
            "FROM dead_letters WHERE tenant = ?"
        )
        args: list[object] = [tenant]
        if hook_id is not None:
            sql += " AND webhook_id = ?"
            args.append(hook_id)
        if ids is not None:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ? OFFSET ?", (*args, limit, offset))
        return [DeadLetter(*r) for r in rows]

    def dead_letter_replayed(self, letter: DeadLetter, now: float) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter.id,))
            first, last, count = letter.first_offset, letter.last_offset, letter.count
            self._ledger(letter.webhook_id, first, last, count, "delivered", "dead_letters", now)

    # -- replays --------------------------------------------------------------------------

    def replay_insert(self, r: Replay) -> None:
        self.conn.execute(
            "INSERT INTO replays(id, tenant, webhook_id, kind, request, status, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.tenant, r.webhook_id, r.kind, r.request, r.status, r.created),
        )

    def replay_progress(
        self, replay_id: str, counts: tuple[int, int, int], status: str, error: str, at: float
    ) -> None:
        finished = None if status == "running" else at
        self.conn.execute(
            "UPDATE replays SET events = ?, batches = ?, failed = ?, status = ?, error = ?, "
            "finished = ? WHERE id = ?",
            (*counts, status, error, finished, replay_id),
        )

    def replay(self, tenant: str, replay_id: str) -> Replay | None:
        row = self.conn.execute(
            "SELECT id, tenant, webhook_id, kind, request, status, events, batches, failed, "
            "error, created, finished FROM replays WHERE id = ? AND tenant = ?",
            (replay_id, tenant),
        ).fetchone()
        return None if row is None else Replay(*row)

    def interrupt_replays(self, now: float) -> None:
        """Replays that were running when the node stopped (they are not resumed)."""
        self.conn.execute(
            "UPDATE replays SET status = 'interrupted', finished = ? WHERE status = 'running'",
            (now,),
        )

    def prune_replays(self, keep: int) -> None:
        self.conn.execute(
            "DELETE FROM replays WHERE status != 'running' AND id NOT IN "
            "(SELECT id FROM replays ORDER BY created DESC LIMIT ?)",
            (keep,),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield None
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class WebhookStore:
    """The store's thread and its connection: ``await store.run(store.db.get, t, id)``."""

    def __init__(self, db: WebhookDb, pool: ThreadPoolExecutor) -> None:
        self.db = db
        self._pool = pool

    @classmethod
    async def open(cls, data_dir: Path) -> WebhookStore:
        os.makedirs(data_dir, exist_ok=True)
        pool = ThreadPoolExecutor(1, thread_name_prefix="webhooks-db")
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(pool, WebhookDb, data_dir / FILE)
        return cls(db, pool)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        await self.run(self.db.close)
        self._pool.shutdown(wait=True)
