"""Unsubscribe groups in PostgreSQL: the ``asm_groups`` and ``asm_members`` tables.

Same calls and results as backends/sqlite/asm.py ``SqliteAsmGroups`` (api/asm_groups.py
``AsmStore``): a write that cannot be done (a duplicate name, the group limit, no such
group) comes back as a value. Several nodes may write one tenant's groups at once, so each
group write runs in a transaction holding ``pg_advisory_xact_lock`` on the tenant: the
count-then-insert of the group limit and the single default cannot race. Member writes
need no lock (the primary key makes an add idempotent). The accept-time lookup of members
is in suppressions.py (one query with the lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from postline.backends.postgres.conn import with_retry
from postline.backends.sqlite.asm import Group, GroupChange, MemberRow, Page
from postline.model.domain import email_key

# A lock key per tenant, apart from migrate.LOCK_KEY's space by the 'asm:' prefix.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('asm:' || $1, 0))"
_COLS = (
    "SELECT g.id, g.name, g.description, g.is_default,"
    " (SELECT count(*) FROM asm_members m WHERE m.tenant = g.tenant AND m.group_id = g.id)"
    " FROM asm_groups g WHERE g.tenant = $1"
)
_ALL = _COLS + " ORDER BY g.id"
_SOME = _COLS + " AND g.id = ANY($2::bigint[]) ORDER BY g.id"
_COUNT = "SELECT count(*) FROM asm_groups WHERE tenant = $1"
_NAME_TAKEN = "SELECT id FROM asm_groups WHERE tenant = $1 AND name = $2 AND id != $3"
_INSERT = (
    "INSERT INTO asm_groups (tenant, name, description, is_default) VALUES ($1, $2, $3, $4)"
    " RETURNING id"
)
_CLEAR_DEFAULT = "UPDATE asm_groups SET is_default = false WHERE tenant = $1 AND id != $2"
_UPDATE = (
    "UPDATE asm_groups SET name = coalesce($1, name), description = coalesce($2, description),"
    " is_default = coalesce($3, is_default) WHERE tenant = $4 AND id = $5"
)
_DELETE = "DELETE FROM asm_groups WHERE tenant = $1 AND id = $2"
_DELETE_MEMBERS = "DELETE FROM asm_members WHERE tenant = $1 AND group_id = $2"
_EXISTS = "SELECT 1 FROM asm_groups WHERE tenant = $1 AND id = $2"
_ADD_MEMBERS = (
    "INSERT INTO asm_members (tenant, email, group_id, created)"
    " SELECT $1, e, $2, $3 FROM unnest($4::text[]) AS e"
    " WHERE EXISTS (SELECT 1 FROM asm_groups WHERE tenant = $1 AND id = $2)"
    " ON CONFLICT (tenant, group_id, email) DO NOTHING"
)
_REMOVE = "DELETE FROM asm_members WHERE tenant = $1 AND group_id = $2 AND email = $3"
_MEMBERS = (
    "SELECT email FROM asm_members WHERE tenant = $1 AND group_id = $2 ORDER BY email"
    " LIMIT $3 OFFSET $4"
)
_SEARCH = (
    "SELECT email FROM asm_members WHERE tenant = $1 AND group_id = $2"
    " AND email = ANY($3::text[]) ORDER BY email"
)
_ALL_MEMBERS = (
    "SELECT m.email, m.group_id, g.name, m.created FROM asm_members m"
    " JOIN asm_groups g ON g.id = m.group_id WHERE m.tenant = $1"
    " ORDER BY m.group_id, m.email LIMIT $2 OFFSET $3"
)
_GROUPS_OF = "SELECT group_id FROM asm_members WHERE tenant = $1 AND email = $2"


def _group(r: Any) -> Group:
    return Group(int(r[0]), r[1], r[2], bool(r[3]), int(r[4]))


async def _groups(conn: Any, tenant: str, ids: list[int] | None) -> list[Group]:
    if ids is None:
        return [_group(r) for r in await conn.fetch(_ALL, tenant)]
    return [_group(r) for r in await conn.fetch(_SOME, tenant, ids)]


async def _exists(conn: Any, tenant: str, group_id: int) -> bool:
    return await conn.fetchval(_EXISTS, tenant, group_id) is not None


class PostgresAsmGroups:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def _locked(self, tenant: str, job: Any) -> Any:
        """``job(conn)`` in a transaction holding the tenant's group lock."""

        async def run(conn: Any) -> Any:
            async with conn.transaction():
                await conn.execute(_LOCK, tenant)
                return await job(conn)

        return await with_retry(self._pool, run)

    async def groups(self, tenant: str, ids: list[int] | None = None) -> list[Group]:
        return await with_retry(self._pool, lambda conn: _groups(conn, tenant, ids))

    async def create(self, tenant: str, change: GroupChange, limit: int) -> Group | str:
        async def job(conn: Any) -> Group | str:
            if await conn.fetchval(_COUNT, tenant) >= limit:
                return f"you can have at most {limit} unsubscribe groups; delete one first"
            if await conn.fetchval(_NAME_TAKEN, tenant, change.name, 0) is not None:
                return "name: a group with this name already exists"
            default = bool(change.is_default)
            args = (tenant, change.name, change.description or "", default)
            gid = int(await conn.fetchval(_INSERT, *args))
            if default:
                await conn.execute(_CLEAR_DEFAULT, tenant, gid)
            return Group(gid, change.name or "", change.description or "", default)

        result: Group | str = await self._locked(tenant, job)
        return result

    async def update(self, tenant: str, group_id: int, change: GroupChange) -> Group | str | None:
        async def job(conn: Any) -> Group | str | None:
            if not await _exists(conn, tenant, group_id):
                return None
            if change.name is not None and await conn.fetchval(
                _NAME_TAKEN, tenant, change.name, group_id
            ):
                return "name: a group with this name already exists"
            args = (change.name, change.description, change.is_default, tenant, group_id)
            await conn.execute(_UPDATE, *args)
            if change.is_default:
                await conn.execute(_CLEAR_DEFAULT, tenant, group_id)
            return (await _groups(conn, tenant, [group_id]))[0]

        result: Group | str | None = await self._locked(tenant, job)
        return result

    async def delete(self, tenant: str, group_id: int) -> bool:
        async def job(conn: Any) -> bool:
            await conn.execute(_DELETE_MEMBERS, tenant, group_id)
            return bool(await conn.execute(_DELETE, tenant, group_id) != "DELETE 0")

        return bool(await self._locked(tenant, job))

    async def add_members(
        self, tenant: str, group_id: int, emails: Sequence[str], created: float
    ) -> bool:
        keys = sorted({email_key(e) for e in emails})

        async def job(conn: Any) -> bool:
            async with conn.transaction():
                if not await _exists(conn, tenant, group_id):
                    return False
                await conn.execute(_ADD_MEMBERS, tenant, group_id, created, keys)
                return True

        return bool(await with_retry(self._pool, job))

    async def remove_member(self, tenant: str, group_id: int, email: str) -> bool:
        async def job(conn: Any) -> bool:
            if not await _exists(conn, tenant, group_id):
                return False
            await conn.execute(_REMOVE, tenant, group_id, email_key(email))
            return True

        return bool(await with_retry(self._pool, job))

    async def members(self, tenant: str, group_id: int, page: Page) -> list[str] | None:
        async def job(conn: Any) -> list[str] | None:
            if not await _exists(conn, tenant, group_id):
                return None
            return [r[0] for r in await conn.fetch(_MEMBERS, tenant, group_id, *page)]

        result: list[str] | None = await with_retry(self._pool, job)
        return result

    async def search(self, tenant: str, group_id: int, emails: Sequence[str]) -> list[str] | None:
        keys = sorted({email_key(e) for e in emails})

        async def job(conn: Any) -> list[str] | None:
            if not await _exists(conn, tenant, group_id):
                return None
            return [r[0] for r in await conn.fetch(_SEARCH, tenant, group_id, keys)]

        result: list[str] | None = await with_retry(self._pool, job)
        return result

    async def all_members(self, tenant: str, page: Page) -> list[MemberRow]:
        rows = await with_retry(self._pool, lambda c: c.fetch(_ALL_MEMBERS, tenant, *page))
        return [(r[0], int(r[1]), r[2], r[3]) for r in rows]

    async def email_groups(self, tenant: str, email: str) -> list[tuple[Group, bool]]:
        async def job(conn: Any) -> list[tuple[Group, bool]]:
            ins = {int(r[0]) for r in await conn.fetch(_GROUPS_OF, tenant, email_key(email))}
            return [(g, g.id in ins) for g in await _groups(conn, tenant, None)]

        result: list[tuple[Group, bool]] = await with_retry(self._pool, job)
        return result
