"""A fresh PostgreSQL database for a test or a benchmark, dropped afterwards.

The local server is a given (CI has it too; tests never skip for its absence). Each
database is ``postline_test_<random hex>`` so runs in parallel, or a killed run's leftover,
never meet; ``CREATE DATABASE`` costs ~70 ms here, so a database per test is affordable.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import asyncpg  # type: ignore[import-untyped]

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn(env: Mapping[str, str]) -> str:
    """``POSTLINE_TEST_PG`` (a DSN whose user may create databases), else the local server."""
    return env.get("POSTLINE_TEST_PG", DEFAULT_ADMIN_DSN)


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead (query string kept)."""
    base, sep, query = dsn.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """Create ``postline_test_<random>``, yield its DSN, drop it (``WITH (FORCE)``: a
    connection a failed test left open must not keep the database alive)."""
    name = f"postline_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin, name)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
