"""Webhooks in PostgreSQL, shared by every node of a cluster (migration 4).

Cluster mode's counterpart of store.WebhookStore (``<data_dir>/webhooks.db``, one per
node): the same calls under the same names, so service.py, dispatcher.py, replay.py and
api.py use either through ``await store.run(store.db.<call>, ...)``. Here the calls are
coroutines on the node's own loop (asyncpg), and :meth:`PgWebhookStore.run` awaits them.
The tables mirror the SQLite ones: ``webhooks``, ``webhook_ledger``,
``webhook_dead_letters`` and ``webhook_replays``.

What differs because several nodes share them:

* **Ledger rows name their event log** (``log``: the datacenter; offsets of two
  datacenters' logs are not comparable), and ``resume_offset`` reads only this log's.
* **A ledger update locks its webhook's row** (``FOR UPDATE``) so that two writers
  (an old owner finishing a batch while a new one starts) never merge ranges wrongly.
* **Replays name their node** (host and data directory, stable across restarts), so a
  node starting marks only its own interrupted runs, not the replays other nodes run.
* **Creates and updates take a per-tenant lock** (:meth:`PgWebhookDb.tenant_lock`), so
  the per-tenant limit and URL uniqueness hold when two nodes change one tenant's
  webhooks at once (without it, 20 of 20 racing pairs of creates both succeeded).
* **Ownership** (pg_service.py): one node dispatches each webhook, the one holding the
  session advisory lock ``(NAMESPACE(log), hashtext(id))`` on its own ownership
  connection. PostgreSQL releases the locks when that session ends, which is what a
  node's death (kill -9, lost network) does, and another node then takes them. A hash
  collision makes one node own both webhooks (advisory locks nest within a session): it
  costs spread, never a second dispatcher.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from postline.activity.pg_store import open_pool
from postline.backends.postgres.conn import DB_ERRORS, connect
from postline.backends.postgres.migrate import migrate_dsn
from postline.webhooks.audit_view import AuditWebhook, audit_webhooks
from postline.webhooks.settings import SETTING_EVENTS, Webhook
from postline.webhooks.store import DeadLetter, Replay

P = ParamSpec("P")
T = TypeVar("T")

POOL_SIZE = 4  # API reads and writes, ledger updates, replays of this node
PING_TIMEOUT = 5.0  # seconds: an ownership session that does not answer is lost
TENANTS = int.from_bytes(b"plwt", "big")  # advisory lock class of tenant_lock (an int4)

_COLUMNS = (
    "id, tenant, url, enabled, types, friendly_name, oauth_client_id, oauth_client_secret, "
    "oauth_token_url, signed, private_key, public_key, start_offset, created, updated"
)
_MARKS = ", ".join(f"${i}" for i in range(1, 16))
_SETS = ", ".join(f"{n} = ${i}" for i, n in enumerate(_COLUMNS.split(", ")[1:], start=2))
_LEDGER = (
    "INSERT INTO webhook_ledger (webhook_id, log, first_offset, last_offset, count, status,"
    " source, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_LOCK_HOOK = "SELECT true FROM webhooks WHERE id = $1 FOR UPDATE"
_REPLAY_COLUMNS = (
    "id, tenant, webhook_id, kind, request, status, events, batches, failed, error, created,"
    " finished"
)


class OwnershipLost(Exception):
    """The ownership session ended: every webhook this node dispatched may now be
    dispatched by another node, so this node must stop its dispatchers."""


def namespace(log: str) -> int:
    """The advisory lock class of this event log's webhook owners (a signed int4)."""
    n = zlib.crc32(f"postline-webhooks/{log}".encode())
    return n - 2**32 if n >= 2**31 else n


def _hook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        tenant=row["tenant"],
        url=row["url"],
        enabled=bool(row["enabled"]),
        types=frozenset(t for t in str(row["types"]).split(",") if t in SETTING_EVENTS),
        friendly_name=row["friendly_name"],
        oauth_client_id=row["oauth_client_id"],
        oauth_client_secret=row["oauth_client_secret"],
        oauth_token_url=row["oauth_token_url"],
        signed=bool(row["signed"]),
        private_key=None if row["private_key"] is None else bytes(row["private_key"]),
        public_key=row["public_key"],
        start_offset=int(row["start_offset"]),
        created=float(row["created"]),
        updated=float(row["updated"]),
    )


def _values(h: Webhook) -> tuple[object, ...]:
    types = ",".join(sorted(h.types))
    return (
        h.id, h.tenant, h.url, h.enabled, types, h.friendly_name, h.oauth_client_id,
        h.oauth_client_secret, h.oauth_token_url, h.signed, h.private_key, h.public_key,
        h.start_offset, h.created, h.updated,
    )  # fmt: skip


def _letter(r: Any) -> DeadLetter:
    return DeadLetter(
        int(r["id"]), r["webhook_id"], int(r["first_offset"]), int(r["last_offset"]),
        int(r["count"]), bytes(r["body"]), r["reason"], float(r["at"]),
    )  # fmt: skip


class PgWebhookDb:
    """store.WebhookDb's calls, as coroutines over a pool; plus the ownership session."""

    def __init__(self, pool: Any, dsn: str, log: str, node: str) -> None:
        self.pool = pool
        self.dsn = dsn
        self.log = log  # the datacenter whose event log the offsets are of
        self.node = node  # names this node's replays
        self.namespace = namespace(log)
        self._owner: Any = None  # the ownership session (None: not connected)

    # -- settings -------------------------------------------------------------------------

    async def insert(self, hook: Webhook) -> None:
        await self.pool.execute(
            f"INSERT INTO webhooks ({_COLUMNS}) VALUES ({_MARKS})", *_values(hook)
        )

    async def update(self, hook: Webhook) -> None:
        await self.pool.execute(f"UPDATE webhooks SET {_SETS} WHERE id = $1", *_values(hook))

    async def delete(self, hook_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for table, column in (
                ("webhooks", "id"),
                ("webhook_ledger", "webhook_id"),
                ("webhook_dead_letters", "webhook_id"),
            ):
                await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", hook_id)

    async def get(self, tenant: str, hook_id: str) -> Webhook | None:
        sql = f"SELECT {_COLUMNS} FROM webhooks WHERE id = $1 AND tenant = $2"
        row = await self.pool.fetchrow(sql, hook_id, tenant)
        return None if row is None else _hook(row)

    async def tenant_hooks(self, tenant: str) -> list[Webhook]:
        sql = f"SELECT {_COLUMNS} FROM webhooks WHERE tenant = $1 ORDER BY seq"
        return [_hook(r) for r in await self.pool.fetch(sql, tenant)]

    async def enabled(self) -> list[Webhook]:
        sql = f"SELECT {_COLUMNS} FROM webhooks WHERE enabled ORDER BY seq"
        return [_hook(r) for r in await self.pool.fetch(sql)]

    # -- the ledger -----------------------------------------------------------------------

    async def resume_offset(self, hook_id: str) -> int | None:
        """Past the newest range of this log any node posted or dead-lettered; None when
        there is none yet. (The webhook's ``start_offset`` is the head of the log of the
        node that made it, which need not be this log: several datacenters share one
        database. The dispatcher then starts at the webhook's creation time in its own
        log instead, dispatcher.py.)"""
        last = await self.pool.fetchval(
            "SELECT max(last_offset) FROM webhook_ledger WHERE webhook_id = $1"
            " AND log = $2 AND source = 'live'",
            hook_id,
            self.log,
        )
        return None if last is None else int(last)

    async def delivered(self, hook_id: str, first: int, last: int, count: int, now: float) -> None:
        """A live batch was posted: grow the newest live delivered row, or start one."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK_HOOK, hook_id):
                return  # deleted through another node while its last batch was posted
            newest = await conn.fetchrow(
                "SELECT seq, status, source, last_offset FROM webhook_ledger"
                " WHERE webhook_id = $1 AND log = $2 ORDER BY seq DESC LIMIT 1",
                hook_id,
                self.log,
            )
            if (
                newest is not None
                and (newest["status"], newest["source"]) == ("delivered", "live")
                and newest["last_offset"] < first
            ):
                await conn.execute(
                    "UPDATE webhook_ledger SET last_offset = $1, count = count + $2, at = $3"
                    " WHERE seq = $4",
                    last,
                    count,
                    now,
                    newest["seq"],
                )
                return
            await conn.execute(
                _LEDGER, hook_id, self.log, first, last, count, "delivered", "live", now
            )

    async def dead(
        self, hook: Webhook, first: int, last: int, count: int, body: bytes, reason: str, now: float
    ) -> None:
        """A live batch failed past max_age: the dead letter and its ledger row at once."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_LOCK_HOOK, hook.id):
                return  # deleted meanwhile: no dead letter for a webhook that is gone
            await conn.execute(
                "INSERT INTO webhook_dead_letters (webhook_id, tenant, first_offset,"
                " last_offset, count, body, reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                hook.id, hook.tenant, first, last, count, body, reason, now,
            )  # fmt: skip
            await conn.execute(_LEDGER, hook.id, self.log, first, last, count, "dead", "live", now)

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters(
        self, tenant: str, hook_id: str | None, limit: int, offset: int, ids: list[int] | None
    ) -> list[DeadLetter]:
        sql = (
            "SELECT id, webhook_id, first_offset, last_offset, count, body, reason, at"
            " FROM webhook_dead_letters WHERE tenant = $1"
            " AND ($2::text IS NULL OR webhook_id = $2)"
            " AND ($3::bigint[] IS NULL OR id = ANY($3))"
            " ORDER BY id LIMIT $4 OFFSET $5"
        )
        rows = await self.pool.fetch(sql, tenant, hook_id, ids, limit, offset)
        return [_letter(r) for r in rows]

    async def dead_letter_replayed(self, letter: DeadLetter, now: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            gone = await conn.execute("DELETE FROM webhook_dead_letters WHERE id = $1", letter.id)
            if gone == "DELETE 0":  # another node's replay posted it meanwhile
                return
            first, last, count = letter.first_offset, letter.last_offset, letter.count
            await conn.execute(
                _LEDGER, letter.webhook_id, self.log, first, last, count,
                "delivered", "dead_letters", now,
            )  # fmt: skip

    # -- replays --------------------------------------------------------------------------

    async def replay_insert(self, r: Replay) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_replays (id, node, tenant, webhook_id, kind, request, status,"
            " created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            r.id, self.node, r.tenant, r.webhook_id, r.kind, r.request, r.status, r.created,
        )  # fmt: skip

    async def replay_progress(
        self, replay_id: str, counts: tuple[int, int, int], status: str, error: str, at: float
    ) -> None:
        finished = None if status == "running" else at
        await self.pool.execute(
            "UPDATE webhook_replays SET events = $1, batches = $2, failed = $3, status = $4,"
            " error = $5, finished = $6 WHERE id = $7",
            *counts, status, error, finished, replay_id,
        )  # fmt: skip

    async def replay(self, tenant: str, replay_id: str) -> Replay | None:
        row = await self.pool.fetchrow(
            f"SELECT {_REPLAY_COLUMNS} FROM webhook_replays WHERE id = $1 AND tenant = $2",
            replay_id,
            tenant,
        )
        if row is None:
            return None
        return Replay(
            row["id"], row["tenant"], row["webhook_id"], row["kind"], row["request"],
            row["status"], int(row["events"]), int(row["batches"]), int(row["failed"]),
            row["error"], float(row["created"]), row["finished"],
        )  # fmt: skip

    async def interrupt_replays(self, now: float) -> None:
        """This node's replays that were running when it stopped (not resumed)."""
        await self.pool.execute(
            "UPDATE webhook_replays SET status = 'interrupted', finished = $1"
            " WHERE status = 'running' AND node = $2",
            now,
            self.node,
        )

    async def prune_replays(self, keep: int) -> None:
        await self.pool.execute(
            "DELETE FROM webhook_replays WHERE status <> 'running' AND id NOT IN"
            " (SELECT id FROM webhook_replays ORDER BY created DESC LIMIT $1)",
            keep,
        )

    # -- settings changes across nodes ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def tenant_lock(self, tenant: str) -> AsyncIterator[None]:
        """Held while a node checks and writes a tenant's webhooks (the per-tenant limit,
        URL uniqueness): service.py's lock serialises one node's changes, this one every
        node's. A session advisory lock on a connection of its own, released at exit (or
        by the server, with the session, if this node dies holding it)."""
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", TENANTS, tenant)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", TENANTS, tenant)

    # -- ownership (pg_service.py) --------------------------------------------------------

    async def check_owner(self) -> None:
        """Open the ownership session, or check it still answers; :class:`OwnershipLost`
        (the session, and with it every lock it held, is gone) when it does not."""
        if self._owner is None:
            self._owner = await connect(self.dsn)
            return
        try:
            await self._owner.fetchval("SELECT 1", timeout=PING_TIMEOUT)
        except DB_ERRORS as exc:
            self._drop_owner()
            raise OwnershipLost(str(exc)) from exc

    async def try_own(self, hook_ids: list[str]) -> list[str]:
        """The webhooks of ``hook_ids`` whose lock this node holds now (taken or held)."""
        if self._owner is None:
            raise OwnershipLost("no ownership session")
        try:
            rows = await self._owner.fetch(
                "SELECT id FROM unnest($2::text[]) AS id"
                " WHERE pg_try_advisory_lock($1, hashtext(id))",
                self.namespace,
                hook_ids,
                timeout=PING_TIMEOUT,
            )
        except DB_ERRORS as exc:
            self._drop_owner()
            raise OwnershipLost(str(exc)) from exc
        return [r[0] for r in rows]

    async def release(self, hook_id: str) -> None:
        """Give a webhook up (disabled or deleted): another node may take it."""
        if self._owner is None:
            return
        try:
            await self._owner.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                self.namespace,
                hook_id,
                timeout=PING_TIMEOUT,
            )
        except DB_ERRORS:
            self._drop_owner()  # every lock goes with the session anyway

    def _drop_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.terminate()

    async def close(self) -> None:
        if self._owner is not None:
            owner, self._owner = self._owner, None
            try:
                await owner.close(timeout=PING_TIMEOUT)
            except DB_ERRORS:
                owner.terminate()
        await self.pool.close()


class PgWebhookStore:
    """store.WebhookStore's shape over :class:`PgWebhookDb`: ``await store.run(store.db.
    get, t, id)`` awaits the coroutine on the caller's loop (no thread: asyncpg is async)."""

    def __init__(self, db: PgWebhookDb) -> None:
        self.db = db

    @classmethod
    async def open(cls, dsn: str, log: str, node: str) -> PgWebhookStore:
        await migrate_dsn(dsn)
        return cls(PgWebhookDb(await open_pool(dsn, POOL_SIZE), dsn, log, node))

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return await fn(*args, **kwargs)

    async def close(self) -> None:
        await self.db.close()


async def audit_state(conn: Any, log: str) -> list[AuditWebhook]:
    """store.audit_state for cluster mode (``postline audit``): every webhook, the ledger
    of ``log`` (this datacenter's event log) and the dead letters, read in one
    repeatable-read snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        hooks = [
            _hook(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM webhooks ORDER BY seq")
        ]
        ledger = await conn.fetch(
            "SELECT webhook_id, first_offset, last_offset, status FROM webhook_ledger"
            " WHERE log = $1 ORDER BY seq",
            log,
        )
        letters = await conn.fetch("SELECT webhook_id, body FROM webhook_dead_letters ORDER BY id")
    return audit_webhooks(hooks, ledger, letters)
