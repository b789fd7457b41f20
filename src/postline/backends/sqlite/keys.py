"""API keys in ``<data_dir>/keys.db`` (SQLite). Only hashes are stored."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from postline.keys import ApiKey, generate, key_hash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  tenant TEXT NOT NULL,
  scopes TEXT NOT NULL,
  created REAL NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0
)
"""
_COLS = "key_id, name, tenant, scopes, created, revoked"


def _row(r: tuple[str, str, str, str, float, int]) -> ApiKey:
    return ApiKey(r[0], r[1], r[2], frozenset(json.loads(r[3])), r[4], bool(r[5]))


class SqliteKeyStore:
    """Small and rarely written; one connection, autocommit, safe across processes (WAL)."""

    def __init__(self, data_dir: str) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(Path(data_dir) / "keys.db"), isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def create(self, name: str, tenant: str, scopes: frozenset[str]) -> tuple[str, ApiKey]:
        key, key_id = generate()
        api_key = ApiKey(key_id, name, tenant, scopes, time.time())
        self._db.execute(
            "INSERT INTO api_keys (key_id, hash, name, tenant, scopes, created)"
            " VALUES (?,?,?,?,?,?)",
            (key_id, key_hash(key), name, tenant, json.dumps(sorted(scopes)), api_key.created),
        )
        return key, api_key

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {_COLS} FROM api_keys"
        rows = (
            self._db.execute(sql + " WHERE tenant=? ORDER BY created", (tenant,))
            if tenant
            else self._db.execute(sql + " ORDER BY created")
        )
        return [_row(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        cur = self._db.execute(
            "UPDATE api_keys SET revoked=1 WHERE key_id=? AND revoked=0", (key_id,)
        )
        return cur.rowcount > 0

    def lookup(self, key: str) -> ApiKey | None:
        r = self._db.execute(
            f"SELECT {_COLS} FROM api_keys WHERE hash=? AND revoked=0", (key_hash(key),)
        ).fetchone()
        return _row(r) if r else None

    def close(self) -> None:
        self._db.close()
