"""The key store's behaviours, run against the embedded (SQLite) and the cluster (PostgreSQL)
store alike, plus what only the shared store has: a key created on one node works on all."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg  # type: ignore[import-untyped]
import pytest

from postline.api.auth import KeyCache
from postline.backends.postgres.conn import PostgresUnavailable
from postline.backends.postgres.keys import PostgresKeyStore
from postline.backends.postgres.migrate import SchemaTooNew
from postline.backends.postgres.migrations import MIGRATIONS
from postline.backends.sqlite.keys import SqliteKeyStore
from postline.keys import generate, key_hash
from postline.testing.postgres import admin_dsn, fresh_database

KEY_RE = re.compile(r"^SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$")
SEND = frozenset({"mail.send"})
STATS = frozenset({"stats.read", "stats.global.read"})
Store: TypeAlias = SqliteKeyStore | PostgresKeyStore


@dataclass
class Backend:
    open: Callable[[], Store]  # another store instance on the same data: another node
    raw: Callable[[], bytes]  # everything stored, to show the key is not in it


async def _sql(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[Store] = []
    if request.param == "sqlite":
        data = str(tmp_path / "data")
        raw = lambda: b"".join(p.read_bytes() for p in (tmp_path / "data").glob("keys.db*"))  # noqa: E731
        yield _tracked(Backend(lambda: SqliteKeyStore(data), raw), opened)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        dump = "SELECT string_agg(t::text, '|') AS d FROM api_keys t"
        raw = lambda: (asyncio.run(_sql(dsn, dump))[0]["d"] or "").encode()  # noqa: E731
        yield _tracked(Backend(lambda: PostgresKeyStore(dsn), raw), opened)
    for store in opened:
        store.close()


def _tracked(backend: Backend, opened: list[Store]) -> Backend:
    def open_() -> Store:
        opened.append(backend.open())
        return opened[-1]

    return Backend(open_, backend.raw)


def eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll ``check`` until true or ``within`` seconds pass (a bound, not a measurement)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_create_shows_the_key_once_and_stores_only_its_hash(backend: Backend) -> None:
    store = backend.open()
    key, info = store.create("ci", "acme", SEND)
    assert KEY_RE.match(key) and info.key_id == key.split(".")[1]
    assert (info.name, info.tenant, info.scopes, info.revoked) == ("ci", "acme", SEND, False)
    raw = backend.raw()
    assert info.key_id.encode() in raw
    assert key.encode() not in raw and key.split(".")[2].encode() not in raw
    listed = store.list()
    assert listed == [info]  # the listing has ids, never the key
    assert key not in repr(listed)


def test_lookup_finds_the_key_with_its_tenant_and_scopes(backend: Backend) -> None:
    store = backend.open()
    key, info = store.create("stats", "t-7", STATS)
    found = store.lookup(key)
    assert found == info and found is not None
    assert KeyCache(store).lookup(key) == info  # as the HTTP and SMTP doors call it
    assert found.tenant == "t-7" and found.scopes == STATS
    assert store.lookup(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret
    assert store.lookup("SG.nope.nope") is None and store.lookup("") is None


def test_revoke_stops_lookup_once_and_the_listing_keeps_the_key(backend: Backend) -> None:
    store = backend.open()
    key, info = store.create("x", "acme", SEND)
    other_key, _ = store.create("y", "acme", SEND)
    assert store.revoke(info.key_id) is True
    assert store.revoke(info.key_id) is False and store.revoke("no-such-id") is False
    assert store.lookup(key) is None and store.lookup(other_key) is not None
    assert [(k.key_id, k.revoked) for k in store.list() if k.key_id == info.key_id] == [
        (info.key_id, True)
    ]


def test_list_by_tenant_in_creation_order(backend: Backend) -> None:
    store = backend.open()
    made = [store.create(f"k{i}", "a" if i % 2 else "b", SEND)[1] for i in range(6)]
    assert store.list("a") == [k for k in made if k.tenant == "a"]
    assert store.list("b") == [k for k in made if k.tenant == "b"]
    assert store.list("nobody") == []
    assert store.list() == made


def test_a_key_created_on_one_node_works_on_another(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    key, info = one.create("shared", "acme", SEND)
    assert eventually(lambda: two.lookup(key) == info)
    assert two.revoke(info.key_id) is True
    assert eventually(lambda: one.lookup(key) is None)
    assert backend.open().lookup(key) is None  # a node started later: revoked too


def _found(store: Store, key: str) -> Callable[[], bool]:
    return lambda: store.lookup(key) is not None


def test_writes_made_in_sql_reach_every_node(pg_dsn: str) -> None:
    """The trigger notifies for any writer (an operator in psql too), deletes included."""
    store = PostgresKeyStore(pg_dsn)
    try:
        key, info = store.create("ops", "acme", SEND)
        asyncio.run(_sql(pg_dsn, "UPDATE api_keys SET revoked = true WHERE key_id = $1",
                         info.key_id))  # fmt: skip
        assert eventually(lambda: store.lookup(key) is None)
        key2, _ = store.create("ops2", "acme", SEND)
        asyncio.run(_sql(pg_dsn, "DELETE FROM api_keys"))
        assert eventually(lambda: store.lookup(key2) is None)
    finally:
        store.close()


def test_a_node_reconnects_and_catches_up_after_its_connections_are_killed(pg_dsn: str) -> None:
    one, two = PostgresKeyStore(pg_dsn), PostgresKeyStore(pg_dsn)
    try:
        kept, _ = one.create("kept", "acme", SEND)
        assert eventually(_found(two, kept))
        kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1"
        asyncio.run(_sql(pg_dsn, kill + " AND pid <> pg_backend_pid()", pg_dsn.rsplit("/", 1)[1]))
        assert two.lookup(kept) is not None  # lookups answer from memory meanwhile
        # Both stores lost every connection: a write retries once on a fresh one.
        key, info = one.create("after", "acme", SEND)
        assert eventually(lambda: two.lookup(key) == info)
        assert two.statistics()["keys_reconnects"] >= 1
        assert two.revoke(info.key_id) is True  # two's pooled connection was killed too
        assert eventually(lambda: one.lookup(key) is None)
    finally:
        one.close()
        two.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(PostgresUnavailable) as info:
        PostgresKeyStore("postgresql://postgres:hunter2@127.0.0.1:1/postgres")
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1" in str(
        info.value
    )
    assert "hunter2" not in str(info.value)


def test_a_missed_notification_is_caught_by_the_periodic_reload(pg_dsn: str) -> None:
    store = PostgresKeyStore(pg_dsn, refresh=0.2)
    try:
        asyncio.run(_sql(pg_dsn, "ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify"))
        key, key_id = generate()
        insert = "INSERT INTO api_keys VALUES ($1, $2, 'quiet', 'acme', $3, now(), false)"
        asyncio.run(_sql(pg_dsn, insert, key_id, key_hash(key), ["mail.send"]))
        assert eventually(_found(store, key))
        assert store.statistics()["keys_reloads"] >= 2
    finally:
        store.close()


def test_a_store_refuses_a_schema_newer_than_it_knows(pg_dsn: str) -> None:
    PostgresKeyStore(pg_dsn).close()
    future = MIGRATIONS[-1].version + 1
    asyncio.run(_sql(pg_dsn, "INSERT INTO schema_migrations VALUES ($1, 'future')", future))
    with pytest.raises(SchemaTooNew, match=f"version {future}"):
        PostgresKeyStore(pg_dsn)
