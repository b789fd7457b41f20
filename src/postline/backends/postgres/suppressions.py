"""Suppression lists and unsubscribe-group members in PostgreSQL, shared by every node.

Cluster mode's counterpart of the lists the SQLite spool keeps in ``spool.db`` (same
behaviours, tests/integration/test_postgres_suppressions.py runs both). The tables are
migration 2 (migrations.py): ``suppressions`` keyed (tenant, email, list), ``asm_groups``,
``asm_members`` keyed (tenant, group_id, email). Addresses are stored as ``email_key``.

The accept-time lookup (:meth:`PostgresSuppressions.suppressed`) is one statement, so one
round trip per request whatever its recipient count: the lists, the members of the mail's
unsubscribe group and the check that every group it names exists are three arms of one
``UNION ALL`` over ``email = ANY($2)``. Writes are upserts (idempotent), so a write retried
on a fresh connection after a lost reply (conn.with_retry) changes nothing twice.

Unlike SQLite, this store and the JetStream spool are two systems: no transaction spans
both. backends/jetstream/spool.py says in which order it writes and why nothing is lost.
The store runs on its caller's event loop (asyncpg pool made there): open it on the loop
that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from postline.backends.postgres.asm import PostgresAsmGroups
from postline.backends.postgres.conn import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    DB_ERRORS,
    PostgresUnavailable,
    redact,
    with_retry,
)
from postline.backends.postgres.migrate import migrate_dsn
from postline.model.domain import email_key
from postline.spool.interface import DROP_REASONS, GROUP_DROP_REASON, Suppression, UnknownGroups

# (email, created, reason, status): one entry of a list, as the suppressions API shows it.
SuppressionRow = tuple[str, float, str, str]

_MEMBER = "#asm"  # the "list" of a group member in the lookup (no list has this name)
_MISSING = "#missing"  # a group the tenant does not have
_LOOKUP = f"""
SELECT email, list FROM suppressions
 WHERE tenant = $1 AND email = ANY($2::text[]) AND list = ANY($3::text[])
UNION ALL
SELECT email, '{_MEMBER}' FROM asm_members
 WHERE tenant = $1 AND group_id = $4 AND email = ANY($2::text[])
UNION ALL
SELECT g::text, '{_MISSING}' FROM unnest($5::bigint[]) AS g
 WHERE NOT EXISTS (SELECT 1 FROM asm_groups WHERE tenant = $1 AND id = g)
"""
_UPSERT = """
INSERT INTO suppressions (tenant, email, list, created, reason, status)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, email, list) DO UPDATE
SET created = excluded.created, reason = excluded.reason, status = excluded.status
"""
_PAGE = """
SELECT email, created, reason, status FROM suppressions
 WHERE tenant = $1 AND list = $2 AND created >= $3 AND created < $4 AND email LIKE $5
 ORDER BY created DESC, email LIMIT $6 OFFSET $7
"""
_ONE = (
    "SELECT email, created, reason, status FROM suppressions"
    " WHERE tenant = $1 AND list = $2 AND email = $3"
)
_DELETE_ALL = "DELETE FROM suppressions WHERE tenant = $1 AND list = $2"
_DELETE_SOME = _DELETE_ALL + " AND email = ANY($3::text[])"
_LISTS = list(DROP_REASONS)  # the lists that make the accept stage drop (not blocks)


class PostgresSuppressions:
    """The spool's suppression calls (``suppressed``, ``add_suppression``, ``record``'s
    lists) and the suppressions API's (``suppression_page``, ``suppression``,
    ``remove_suppressions``, ``asm``), on a pool of the caller's loop."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.asm = PostgresAsmGroups(pool)

    @classmethod
    async def open(cls, dsn: str, *, migrate: bool = True, size: int = 4) -> PostgresSuppressions:
        """Migrate (unless told not to) and connect; raises PostgresUnavailable or
        SchemaTooNew when it cannot."""
        if migrate:
            await migrate_dsn(dsn)
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, reset=_no_reset,
            )  # fmt: skip
        except DB_ERRORS as exc:
            raise PostgresUnavailable(
                f"cannot connect to PostgreSQL at {redact(dsn)}: {exc}"
            ) from exc
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    # -- the accept stage -----------------------------------------------------------------

    async def suppressed(
        self, tenant: str, emails: Sequence[str], groups: Sequence[int] = ()
    ) -> dict[str, str]:
        """email_key -> drop reason for the ``emails`` on a list that drops (blocks do
        not), or, with ``groups`` = (asm group_id, *groups_to_display), unsubscribed from
        group_id. Raises UnknownGroups when the tenant lacks one of ``groups``. One query."""
        wanted = sorted({email_key(e) for e in emails})
        if not wanted and not groups:
            return {}
        group_id = groups[0] if groups else None
        args = (tenant, wanted, _LISTS, group_id, sorted(set(groups)))
        rows = await with_retry(self._pool, lambda conn: conn.fetch(_LOOKUP, *args))
        return _reasons(groups, rows)

    # -- writes ---------------------------------------------------------------------------

    async def add_suppression(
        self,
        tenant: str,
        list_name: str,
        email: str,
        *,
        reason: str = "",
        status: str = "",
        created: float | None = None,
    ) -> None:
        when = time.time() if created is None else created
        await self.add([Suppression(tenant, list_name, email, reason, status, when)])

    async def add(self, suppressions: Sequence[Suppression]) -> None:
        """Upsert every entry in one transaction (a repeat updates created/reason/status)."""
        rows = [
            (x.tenant, email_key(x.email), x.list_name, x.created, x.reason, x.status)
            for x in suppressions
        ]
        if not rows:
            return

        async def upsert(conn: Any) -> None:
            async with conn.transaction():
                await conn.executemany(_UPSERT, rows)

        await with_retry(self._pool, upsert)

    async def remove_suppressions(
        self, tenant: str, list_name: str, emails: Sequence[str] | None
    ) -> int:
        """Take addresses (None: every one) off a tenant's list; how many were on it."""
        args: tuple[Any, ...]
        if emails is None:
            sql, args = _DELETE_ALL, (tenant, list_name)
        else:
            keys = sorted({email_key(e) for e in emails})
            sql, args = _DELETE_SOME, (tenant, list_name, keys)
        status = await with_retry(self._pool, lambda conn: conn.execute(sql, *args))
        return int(status.rsplit(" ", 1)[1])  # "DELETE <n>"

    # -- the suppressions API's reads -------------------------------------------------------

    async def suppression_page(
        self,
        tenant: str,
        list_name: str,
        window: tuple[float, float],
        like: str,
        page: tuple[int, int],
    ) -> list[SuppressionRow]:
        """A page (limit, offset) of one list, newest first: entries created in
        ``[window[0], window[1])`` whose email is LIKE ``like`` (``\\`` escapes)."""
        args = (tenant, list_name, *window, like, *page)
        rows = await with_retry(self._pool, lambda conn: conn.fetch(_PAGE, *args))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def suppression(self, tenant: str, list_name: str, email: str) -> SuppressionRow | None:
        args = (tenant, list_name, email_key(email))
        r = await with_retry(self._pool, lambda conn: conn.fetchrow(_ONE, *args))
        return (r[0], r[1], r[2], r[3]) if r else None


async def _no_reset(conn: Any) -> None:
    """asyncpg resets a connection on every release (unlock, close cursors, UNLISTEN, RESET
    ALL): a second round trip per lookup. These connections hold no session state (locks
    are transaction-scoped, no LISTEN, no SET), so there is nothing to reset."""


def _reasons(groups: Sequence[int], rows: Sequence[Any]) -> dict[str, str]:
    """The lookup's rows -> email_key -> reason (a list's reason over the group's), as
    backends/sqlite/reader.suppressed; UnknownGroups for missing groups, in asked order."""
    missing = {int(r[0]) for r in rows if r[1] == _MISSING}
    if missing:
        raise UnknownGroups([g for g in groups if g in missing])
    out: dict[str, str] = {}
    lists: dict[str, set[str]] = {}
    for email, list_name in rows:
        if list_name == _MEMBER:
            out[email] = GROUP_DROP_REASON
        else:
            lists.setdefault(email, set()).add(list_name)
    for email, names in lists.items():
        out[email] = next(r for name, r in DROP_REASONS.items() if name in names)
    return out
