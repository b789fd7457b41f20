"""Apply the schema on start, safely with several nodes starting at once.

Strategy: one transaction that first takes ``pg_advisory_xact_lock(LOCK_KEY)``. Nodes
starting together queue on the lock; the first applies what is missing and commits (which
releases the lock), the others then find ``schema_migrations`` up to date and apply nothing.
A failing migration rolls back with everything before it in that start, so a database is
always at a version the code names. A database at a version newer than this code knows is
refused: an older node must not write to a schema it does not understand.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from postline.backends.postgres.conn import MIGRATE_TIMEOUT, PostgresUnavailable, connect
from postline.backends.postgres.migrations import MIGRATIONS, Migration

# "postline" in ASCII as a bigint: one lock per database, shared by every Postline node.
LOCK_KEY = int.from_bytes(b"postline", "big")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaTooNew(Exception):
    """The database was migrated by a newer Postline than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the PostgreSQL schema is at version {found} but this Postline knows versions "
            f"up to {known}: a newer Postline migrated this database; upgrade this node "
            "(refusing to start rather than write to a schema it does not know)"
        )
        self.found = found
        self.known = known


async def migrate(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Bring the database to the newest version in ``migrations``; the versions applied."""
    known = migrations[-1].version if migrations else 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        found: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if found > known:
            raise SchemaTooNew(found, known)
        applied: list[int] = []
        for m in migrations:
            if m.version > found:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
                applied.append(m.version)
        return applied


async def migrate_dsn(dsn: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    conn = await connect(dsn, command_timeout=MIGRATE_TIMEOUT)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    """``python -m postline.backends.postgres.migrate DSN``: prints the versions applied."""
    try:
        applied = asyncio.run(migrate_dsn(argv[0]))
    except (SchemaTooNew, PostgresUnavailable) as exc:
        print(f"postline: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SchemaTooNew) else 1
    print(" ".join(map(str, applied)) or "up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
