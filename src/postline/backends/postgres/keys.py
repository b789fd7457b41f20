"""API keys in PostgreSQL, shared by every node: a key created on one node works on all.

Same protocol and calling convention as :class:`postline.backends.sqlite.keys.SqliteKeyStore`
(synchronous). ``lookup`` reads the in-memory :class:`KeyMirror` (a dict read: safe on the
node's event loop); ``create``, ``list`` and ``revoke`` go to PostgreSQL through the store's
private loop thread and block their caller for one round trip (the CLI; a future HTTP
handler should call them via ``asyncio.to_thread``). Only ``sha256(key)`` is stored.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from postline.backends.postgres.conn import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    MIGRATE_TIMEOUT,
    create_pool,
    with_retry,
)
from postline.backends.postgres.loop import LoopThread
from postline.backends.postgres.migrate import migrate_dsn
from postline.backends.postgres.mirror import COLS, KeyMirror, to_key
from postline.keys import ApiKey, generate, key_hash

_INSERT = f"""
INSERT INTO api_keys (key_id, hash, name, tenant, scopes, created)
VALUES ($1, $2, $3, $4, $5, to_timestamp($6)) ON CONFLICT (key_id) DO NOTHING RETURNING {COLS}
"""
_OWN_ROW = f"SELECT {COLS} FROM api_keys WHERE key_id = $1 AND hash = $2"
# A bound on waiting for one call (two tries); each statement's own is COMMAND_TIMEOUT.
_CALL_TIMEOUT = 2 * (CONNECT_TIMEOUT + COMMAND_TIMEOUT)


class PostgresKeyStore:
    def __init__(self, dsn: str, *, migrate: bool = True, refresh: float = 60.0) -> None:
        """Migrate (unless told not to), connect and load every live key; raises
        :class:`PostgresUnavailable` or :class:`SchemaTooNew` when it cannot start."""
        self._thread = LoopThread("postgres-keys")
        try:
            self._pool, self._mirror = self._thread.run(
                self._open(dsn, migrate, refresh), MIGRATE_TIMEOUT + _CALL_TIMEOUT
            )
        except BaseException:
            self._thread.stop()
            raise

    async def _open(self, dsn: str, migrate: bool, refresh: float) -> tuple[Any, KeyMirror]:
        if migrate:
            await migrate_dsn(dsn)
        pool = await create_pool(dsn, size=2)
        mirror = KeyMirror(dsn, refresh=refresh)
        try:
            await mirror.start()
        except BaseException:
            await mirror.stop()
            await pool.close()
            raise
        return pool, mirror

    def create(self, name: str, tenant: str, scopes: frozenset[str]) -> tuple[str, ApiKey]:
        key, key_id = generate()
        return key, self._thread.run(self._create(key, key_id, name, tenant, scopes),
                                     _CALL_TIMEOUT)  # fmt: skip

    async def _create(
        self, key: str, key_id: str, name: str, tenant: str, scopes: frozenset[str]
    ) -> ApiKey:
        digest = key_hash(key)
        args = (key_id, digest, name, tenant, sorted(scopes), time.time())

        async def insert(conn: Any) -> Any:
            # A retry after a lost reply finds its own row (same random key_id and hash).
            row = await conn.fetchrow(_INSERT, *args)
            return row or await conn.fetchrow(_OWN_ROW, key_id, digest)

        row = await with_retry(self._pool, insert)
        if row is None:  # key_id taken by another key: 128 random bits, so never seen
            raise RuntimeError(f"key id {key_id} already exists")
        api_key = to_key(row)
        self._mirror.put(digest, api_key)
        return api_key

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        return self._thread.run(self._list(tenant), _CALL_TIMEOUT)

    async def _list(self, tenant: str | None) -> builtins.list[ApiKey]:
        sql = f"SELECT {COLS} FROM api_keys"
        args: tuple[str, ...]
        if tenant:
            sql, args = sql + " WHERE tenant = $1 ORDER BY created", (tenant,)
        else:
            sql, args = sql + " ORDER BY created", ()
        rows = await with_retry(self._pool, lambda conn: conn.fetch(sql, *args))
        return [to_key(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """True if this call revoked a live key. (After a connection lost between commit
        and reply, the retry finds the key revoked already and says False.)"""
        return self._thread.run(self._revoke(key_id), _CALL_TIMEOUT)

    async def _revoke(self, key_id: str) -> bool:
        sql = "UPDATE api_keys SET revoked = true WHERE key_id = $1 AND NOT revoked RETURNING hash"
        digest = await with_retry(self._pool, lambda conn: conn.fetchval(sql, key_id))
        if digest is None:
            return False
        self._mirror.live.pop(digest, None)  # gone here at once; the others on NOTIFY
        return True

    def lookup(self, key: str) -> ApiKey | None:
        """The live key matching ``key``, from memory (never a query: see ``mirror``)."""
        return self._mirror.live.get(key_hash(key))

    def statistics(self) -> dict[str, float]:
        m = self._mirror
        return {"keys_live": len(m.live), "keys_reloads": m.reloads,
                "keys_reconnects": m.reconnects}  # fmt: skip

    def close(self) -> None:
        try:
            self._thread.run(self._close(), _CALL_TIMEOUT)
        finally:
            self._thread.stop()

    async def _close(self) -> None:
        await self._mirror.stop()
        await self._pool.close()
