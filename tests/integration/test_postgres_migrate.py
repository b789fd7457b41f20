"""Schema migrations on the local PostgreSQL: applied once however many nodes start at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from postline.backends.postgres.migrate import SchemaTooNew, migrate, migrate_dsn
from postline.backends.postgres.migrations import MIGRATIONS, Migration, check_order
from postline.testing.postgres import admin_dsn, fresh_database

LATEST = MIGRATIONS[-1].version


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


async def _fetch(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def _versions(dsn: str) -> list[tuple[int, str]]:
    rows = asyncio.run(_fetch(dsn, "SELECT version, name FROM schema_migrations ORDER BY 1"))
    return [(r["version"], r["name"]) for r in rows]


def test_fresh_database_gets_every_migration_then_none(dsn: str) -> None:
    assert asyncio.run(migrate_dsn(dsn)) == [m.version for m in MIGRATIONS]
    assert asyncio.run(migrate_dsn(dsn)) == []
    assert _versions(dsn) == [(m.version, m.name) for m in MIGRATIONS]


def test_five_processes_starting_at_once_apply_each_migration_once(dsn: str) -> None:
    cmd = [sys.executable, "-m", "postline.backends.postgres.migrate", dsn]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(5)]  # fmt: skip
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [err for _, err in outs]
    printed = sorted(out.strip() for out, _ in outs)
    assert printed == [" ".join(str(m.version) for m in MIGRATIONS)] + ["up to date"] * 4
    assert _versions(dsn) == [(m.version, m.name) for m in MIGRATIONS]


# Each migration leaves a row per application, and sleeps inside its transaction so that
# nodes without the lock would overlap.
_COUNTED = (
    Migration(1, "hits", "CREATE TABLE hits (v int); INSERT INTO hits VALUES (1)"),
    Migration(2, "slow", "SELECT pg_sleep(0.05); INSERT INTO hits VALUES (2)"),
    Migration(3, "more", "INSERT INTO hits VALUES (3)"),
)


async def _concurrent(dsn: str, n: int) -> list[list[int]]:
    conns = [await asyncpg.connect(dsn) for _ in range(n)]
    try:
        return list(await asyncio.gather(*(migrate(c, _COUNTED) for c in conns)))
    finally:
        for c in conns:
            await c.close()


def test_five_tasks_at_once_run_each_migration_exactly_once(dsn: str) -> None:
    results = asyncio.run(_concurrent(dsn, 5))
    assert sorted(results) == [[], [], [], [], [1, 2, 3]]
    hits = asyncio.run(_fetch(dsn, "SELECT v FROM hits ORDER BY v"))
    assert [r["v"] for r in hits] == [1, 2, 3]


def test_a_newer_schema_is_refused_with_both_versions_named(dsn: str) -> None:
    asyncio.run(migrate_dsn(dsn))
    asyncio.run(_fetch(dsn, f"INSERT INTO schema_migrations VALUES ({LATEST + 1}, 'future')"))
    with pytest.raises(SchemaTooNew) as info:
        asyncio.run(migrate_dsn(dsn))
    assert (info.value.found, info.value.known) == (LATEST + 1, LATEST)
    cmd = [sys.executable, "-m", "postline.backends.postgres.migrate", dsn]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"version {LATEST + 1}" in out.stderr and f"up to {LATEST}" in out.stderr
    assert "upgrade" in out.stderr


def test_a_failing_migration_applies_nothing_of_that_start(dsn: str) -> None:
    bad = (*_COUNTED[:1], Migration(2, "broken", "INSERT INTO no_such_table VALUES (1)"))
    with pytest.raises(asyncpg.UndefinedTableError):
        asyncio.run(_concurrent_one(dsn, bad))
    # One transaction: migration 1's table and schema_migrations itself are rolled back.
    sql = "SELECT to_regclass('hits') AS a, to_regclass('schema_migrations') AS b"
    assert list(asyncio.run(_fetch(dsn, sql))[0].values()) == [None, None]


async def _concurrent_one(dsn: str, migrations: tuple[Migration, ...]) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()


def test_unreachable_server_is_named_without_its_password() -> None:
    cmd = [sys.executable, "-m", "postline.backends.postgres.migrate",
           "postgresql://postgres:hunter2@127.0.0.1:1/postgres"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:1" in out.stderr
    assert "hunter2" not in out.stderr


def test_versions_must_run_one_to_n() -> None:
    check_order(_COUNTED)
    with pytest.raises(ValueError, match=r"1\.\.n"):
        check_order((_COUNTED[0], _COUNTED[2]))
    with pytest.raises(ValueError, match=r"1\.\.n"):
        check_order((_COUNTED[0], _COUNTED[0]))
