"""Every live API key in memory, kept fresh by LISTEN/NOTIFY: lookups never touch the network.

Why a mirror: ``KeyStore.lookup`` is synchronous and runs on the node's event loop for
every request, and an unknown key (a guess, an attack) must cost as little as a known one.
A dict lookup does both; a query per miss would put PostgreSQL's round trip on the loop and
let guessed keys load the database.

How it stays fresh (all on the store's private loop, one connection):

1. LISTEN on :data:`KEYS_CHANNEL` first, then load every live key: a change committed
   after that snapshot is notified, and its notification is handled after the load.
2. A notification carries a ``key_id``; the worker drains every pending one and re-reads
   those rows in one query (a revoked row leaves the mirror; a row gone means a DELETE
   outside Postline, answered with a full reload).
3. Every ``refresh`` seconds a full reload, in case a notification was missed.
4. The connection lost, or any query failing: reconnect with backoff (0.1 s doubling to
   ``max_backoff``), LISTEN, full reload. Meanwhile lookups answer from the last good
   mirror, so a PostgreSQL outage does not stop mail; a revoke made during it takes effect
   when the connection is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from postline.backends.postgres.conn import DB_ERRORS, connect
from postline.backends.postgres.migrations import KEYS_CHANNEL
from postline.keys import ApiKey

log = logging.getLogger("postline.keys")

COLS = "key_id, name, tenant, scopes, extract(epoch FROM created)::float8 AS created, revoked"
_LOST = object()  # queued when the connection drops


def to_key(r: Any) -> ApiKey:
    return ApiKey(r["key_id"], r["name"], r["tenant"], frozenset(r["scopes"]), r["created"],
                  r["revoked"])  # fmt: skip


class KeyMirror:
    def __init__(self, dsn: str, *, refresh: float = 60.0, max_backoff: float = 5.0) -> None:
        self.live: dict[str, ApiKey] = {}  # sha256 hex -> key; replaced whole on reload
        self._dsn = dsn
        self._refresh = refresh
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.reconnects = 0

    async def start(self) -> None:
        """Connect, listen and load: raises if PostgreSQL cannot be reached now."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="key-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    def put(self, key_hash: str, key: ApiKey) -> None:
        """A key this node just created: usable here at once, before its notification."""
        self.live[key_hash] = key

    async def _connect(self) -> None:
        conn = await connect(self._dsn)
        self._conn = conn
        await conn.add_listener(KEYS_CHANNEL, self._notified)
        conn.add_termination_listener(self._lost)
        await self._reload()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._queue.put_nowait(payload)

    def _lost(self, conn: Any) -> None:
        if conn is self._conn:
            self._queue.put_nowait(_LOST)

    async def _reload(self) -> None:
        rows = await self._conn.fetch(f"SELECT hash, {COLS} FROM api_keys WHERE NOT revoked")
        self.live = {r["hash"]: to_key(r) for r in rows}
        self.reloads += 1

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._refresh)
            except TimeoutError:
                first = None  # nothing for a while: a full reload
            items = [first]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._apply(items)
            except DB_ERRORS as exc:
                log.warning("api key mirror: %s; reconnecting (lookups use the last copy)", exc)
                await self._reconnect()
            except Exception:  # a bug must not freeze the mirror for good: start afresh
                log.exception("api key mirror: unexpected error; reconnecting")
                await self._reconnect()

    async def _apply(self, items: list[object]) -> None:
        if _LOST in items:
            raise ConnectionResetError("connection to PostgreSQL lost")
        ids = [i for i in items if isinstance(i, str)]
        if None in items or not ids:
            return await self._reload()
        rows = await self._conn.fetch(
            f"SELECT hash, {COLS} FROM api_keys WHERE key_id = ANY($1)", ids
        )
        if len(rows) < len(set(ids)):
            return await self._reload()  # deleted behind our back: which hash is unknown
        live = self.live
        for r in rows:
            if r["revoked"]:
                live.pop(r["hash"], None)
            else:
                live[r["hash"]] = to_key(r)

    async def _reconnect(self) -> None:
        old, self._conn = self._conn, None
        if old is not None:
            old.terminate()
        delay = 0.1
        while True:
            try:
                await self._connect()
            except DB_ERRORS as exc:
                log.warning("api key mirror: cannot reconnect: %s; retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
            else:
                # Notifications still queued are re-read, not dropped: one may be for a
                # commit the reload's snapshot just missed.
                self.reconnects += 1
                return
