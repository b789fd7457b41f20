"""Unsubscribe groups in ``spool.db``: the ``asm_groups`` and ``asm_members`` tables.

They live in the spool's file because the accept stage reads them in the same read (HTTP)
or the same transaction (relay) as the global suppression lists: :func:`group_drops` runs
inside :func:`reader.suppressed`, one query per request whatever its recipient count.
Writes go through the spool's group-commit writer; a write that cannot be done (a
duplicate name, the group limit, no such group) comes back as a value, never raised, so
that it does not break up the transaction it shares with other writers.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from postline.backends.sqlite import schema as sql
from postline.model.domain import email_key
from postline.spool.interface import GROUP_DROP_REASON, UnknownGroups

if TYPE_CHECKING:  # reader.py imports this module for group_drops
    from postline.backends.sqlite.reader import Reader
    from postline.backends.sqlite.writer import GroupCommitWriter


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    name: str
    description: str
    is_default: bool
    unsubscribes: int = 0  # members


@dataclass(frozen=True, slots=True)
class GroupChange:
    """A PATCH: the fields to set (None leaves a field as it is)."""

    name: str | None = None
    description: str | None = None
    is_default: bool | None = None


# (email, group id, group name, created): one group suppression of a tenant
MemberRow = tuple[str, int, str, float]
Page = tuple[int, int]  # limit, offset

_GROUP_COLS = (
    "SELECT g.id, g.name, g.description, g.is_default,"
    " (SELECT count(*) FROM asm_members m WHERE m.tenant = g.tenant AND m.group_id = g.id)"
    " FROM asm_groups g WHERE g.tenant = ?"
)
_ALL_GROUPS = _GROUP_COLS + " ORDER BY g.id"
_SOME_GROUPS = _GROUP_COLS + " AND g.id IN ({}) ORDER BY g.id"
_COUNT_GROUPS = "SELECT count(*) FROM asm_groups WHERE tenant = ?"
_NAME_TAKEN = "SELECT id FROM asm_groups WHERE tenant = ? AND name = ? AND id != ?"
_INSERT_GROUP = (
    "INSERT INTO asm_groups (tenant, name, description, is_default) VALUES (?, ?, ?, ?)"
    " RETURNING id"
)
_CLEAR_DEFAULT = "UPDATE asm_groups SET is_default = 0 WHERE tenant = ? AND id != ?"
_UPDATE_GROUP = (
    "UPDATE asm_groups SET name = coalesce(?, name), description = coalesce(?, description),"
    " is_default = coalesce(?, is_default) WHERE tenant = ? AND id = ?"
)
_DELETE_GROUP = "DELETE FROM asm_groups WHERE tenant = ? AND id = ?"
_DELETE_MEMBERS = "DELETE FROM asm_members WHERE tenant = ? AND group_id = ?"
_EXISTING = "SELECT id FROM asm_groups WHERE tenant = ? AND id IN ({})"
_ADD_MEMBER = (
    "INSERT INTO asm_members (tenant, email, group_id, created) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (tenant, group_id, email) DO NOTHING"
)
_MEMBERS = (
    "SELECT email FROM asm_members WHERE tenant = ? AND group_id = ? ORDER BY email"
    " LIMIT ? OFFSET ?"
)
_MEMBERS_IN = "SELECT email FROM asm_members WHERE tenant = ? AND group_id = ? AND email IN ({})"
_REMOVE_MEMBER = "DELETE FROM asm_members WHERE tenant = ? AND group_id = ? AND email = ?"
_ALL_MEMBERS = (
    "SELECT m.email, m.group_id, g.name, m.created FROM asm_members m"
    " JOIN asm_groups g ON g.id = m.group_id WHERE m.tenant = ? ORDER BY m.group_id, m.email"
    " LIMIT ? OFFSET ?"
)
_GROUPS_OF = (  # one primary-key probe per group (at most 200), not a scan of the members
    "SELECT g.id FROM asm_groups g WHERE g.tenant = ?1 AND EXISTS (SELECT 1 FROM asm_members m"
    " WHERE m.tenant = ?1 AND m.group_id = g.id AND m.email = ?2)"
)


# -- the accept-time lookup (inside reader.suppressed's read or the accept transaction) ----


def group_drops(
    tenant: str, emails: Sequence[str], groups: Sequence[int], conn: sqlite3.Connection
) -> dict[str, str]:
    """``groups`` = (group_id, *groups_to_display): raise UnknownGroups for those the
    tenant does not have, else the ``emails`` (lower-cased) unsubscribed from group_id."""
    wanted = sorted(set(groups))
    found = {r[0] for r in sql.select_in(conn, _EXISTING, (tenant,), wanted)}
    missing = [g for g in groups if g not in found]
    if missing:
        raise UnknownGroups(missing)
    rows = sql.select_in(conn, _MEMBERS_IN, (tenant, groups[0]), list(emails))
    return {r[0]: GROUP_DROP_REASON for r in rows}


# -- reads ------------------------------------------------------------------------------


def _group(r: tuple[Any, ...]) -> Group:
    return Group(r[0], r[1], r[2], bool(r[3]), r[4])


def _groups(tenant: str, ids: list[int] | None, conn: sqlite3.Connection) -> list[Group]:
    if ids is None:
        return [_group(r) for r in conn.execute(_ALL_GROUPS, (tenant,))]
    return sorted((_group(r) for r in sql.select_in(conn, _SOME_GROUPS, (tenant,), ids)),
                  key=lambda g: g.id)  # fmt: skip


def _members(tenant: str, group_id: int, page: Page, conn: sqlite3.Connection) -> list[str] | None:
    if not _exists(tenant, group_id, conn):
        return None
    return [r[0] for r in conn.execute(_MEMBERS, (tenant, group_id, *page))]


def _search(
    tenant: str, group_id: int, emails: list[str], conn: sqlite3.Connection
) -> list[str] | None:
    if not _exists(tenant, group_id, conn):
        return None
    return sorted(r[0] for r in sql.select_in(conn, _MEMBERS_IN, (tenant, group_id), emails))


def _email_groups(tenant: str, email: str, conn: sqlite3.Connection) -> list[tuple[Group, bool]]:
    ins = {r[0] for r in conn.execute(_GROUPS_OF, (tenant, email))}
    return [(g, g.id in ins) for g in _groups(tenant, None, conn)]


def _exists(tenant: str, group_id: int, conn: sqlite3.Connection) -> bool:
    return bool(sql.select_in(conn, _EXISTING, (tenant,), [group_id]))


# -- writes (writer thread; problems come back as a message) -------------------------------


def _create(tenant: str, change: GroupChange, limit: int, conn: sqlite3.Connection) -> Group | str:
    if conn.execute(_COUNT_GROUPS, (tenant,)).fetchone()[0] >= limit:
        return f"you can have at most {limit} unsubscribe groups; delete one first"
    if conn.execute(_NAME_TAKEN, (tenant, change.name, 0)).fetchone():
        return "name: a group with this name already exists"
    default = bool(change.is_default)
    args = (tenant, change.name, change.description or "", int(default))
    (gid,) = conn.execute(_INSERT_GROUP, args).fetchone()
    if default:
        conn.execute(_CLEAR_DEFAULT, (tenant, gid))
    return Group(gid, change.name or "", change.description or "", default)


def _update(
    tenant: str, group_id: int, change: GroupChange, conn: sqlite3.Connection
) -> Group | str | None:
    if not _exists(tenant, group_id, conn):
        return None
    if (
        change.name is not None
        and conn.execute(_NAME_TAKEN, (tenant, change.name, group_id)).fetchone()
    ):
        return "name: a group with this name already exists"
    default = None if change.is_default is None else int(change.is_default)
    conn.execute(_UPDATE_GROUP, (change.name, change.description, default, tenant, group_id))
    if change.is_default:
        conn.execute(_CLEAR_DEFAULT, (tenant, group_id))
    return _groups(tenant, [group_id], conn)[0]


def _delete(tenant: str, group_id: int, conn: sqlite3.Connection) -> bool:
    conn.execute(_DELETE_MEMBERS, (tenant, group_id))
    return conn.execute(_DELETE_GROUP, (tenant, group_id)).rowcount > 0


def _add_members(
    tenant: str, group_id: int, emails: list[str], created: float, conn: sqlite3.Connection
) -> bool:
    if not _exists(tenant, group_id, conn):
        return False
    conn.executemany(_ADD_MEMBER, [(tenant, e, group_id, created) for e in emails])
    return True


def _remove_member(tenant: str, group_id: int, email: str, conn: sqlite3.Connection) -> bool:
    if not _exists(tenant, group_id, conn):
        return False
    conn.execute(_REMOVE_MEMBER, (tenant, group_id, email))
    return True


def _all_members(tenant: str, page: Page, conn: sqlite3.Connection) -> list[MemberRow]:
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(_ALL_MEMBERS, (tenant, *page))]


class SqliteAsmGroups:
    """The unsubscribe-group calls of the API (api/asm_groups.py ``AsmStore``)."""

    def __init__(self, writer: GroupCommitWriter, reader: Reader) -> None:
        self._writer = writer
        self._reader = reader

    async def groups(self, tenant: str, ids: list[int] | None = None) -> list[Group]:
        return await self._reader.run(functools.partial(_groups, tenant, ids))

    async def create(self, tenant: str, change: GroupChange, limit: int) -> Group | str:
        job = functools.partial(_create, tenant, change, limit)
        return await self._writer.run(job, essential=False)

    async def update(self, tenant: str, group_id: int, change: GroupChange) -> Group | str | None:
        job = functools.partial(_update, tenant, group_id, change)
        return await self._writer.run(job, essential=False)

    async def delete(self, tenant: str, group_id: int) -> bool:
        return await self._writer.run(functools.partial(_delete, tenant, group_id), essential=False)

    async def add_members(
        self, tenant: str, group_id: int, emails: Sequence[str], created: float
    ) -> bool:
        keys = sorted({email_key(e) for e in emails})
        job = functools.partial(_add_members, tenant, group_id, keys, created)
        return await self._writer.run(job, essential=False)

    async def remove_member(self, tenant: str, group_id: int, email: str) -> bool:
        job = functools.partial(_remove_member, tenant, group_id, email_key(email))
        return await self._writer.run(job, essential=False)

    async def members(self, tenant: str, group_id: int, page: Page) -> list[str] | None:
        return await self._reader.run(functools.partial(_members, tenant, group_id, page))

    async def search(self, tenant: str, group_id: int, emails: Sequence[str]) -> list[str] | None:
        keys = sorted({email_key(e) for e in emails})
        return await self._reader.run(functools.partial(_search, tenant, group_id, keys))

    async def all_members(self, tenant: str, page: Page) -> list[MemberRow]:
        return await self._reader.run(functools.partial(_all_members, tenant, page))

    async def email_groups(self, tenant: str, email: str) -> list[tuple[Group, bool]]:
        job = functools.partial(_email_groups, tenant, email_key(email))
        return await self._reader.run(job)
