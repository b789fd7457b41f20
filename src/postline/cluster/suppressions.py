"""Suppressions in cluster mode: the lists every node shares, in PostgreSQL.

The JetStream spool keeps its suppression calls in a PostgresSuppressions store
(backends/jetstream/lists.py; the spool conformance SUPPRESSION_CHECKS run on that pair):
the accept path drops listed recipients with SendGrid's reasons (spool/drops.py), a
settle that suppresses (a hard bounce) lists the address before the delivery's tombstone,
and the suppression and unsubscribe-group APIs (api/suppressions.py, api/asm_groups.py)
read and write the same tables on every node. A suppression added through one node's API
is seen by every other node's next accept: there is no cache.

What this module adds is the failure mapping. PostgreSQL away (or refusing) raises
asyncpg's or the socket's errors (NATS its own, for the events ``record`` appends); the
doors and the APIs know SpoolUnavailable, which they answer with 503 + Retry-After (HTTP)
or 452 (SMTP) having acknowledged nothing. So every call here turns those errors into
SpoolUnavailable.
UnknownGroups (a ValueError) passes through as the 400 / 550 it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

import nats.errors

from postline.backends.jetstream.spool import JetStreamSpool
from postline.backends.postgres.asm import PostgresAsmGroups
from postline.backends.postgres.conn import DB_ERRORS
from postline.backends.postgres.suppressions import SuppressionRow
from postline.backends.sqlite.asm import Group, GroupChange, MemberRow, Page
from postline.model.events import EventRecord
from postline.spool.interface import SpoolUnavailable, Suppression

T = TypeVar("T")
RETRY_AFTER = 5  # seconds a client is told to wait when PostgreSQL is away


async def guarded(call: Awaitable[T]) -> T:
    """``await call``, PostgreSQL's failures raised as SpoolUnavailable."""
    try:
        return await call
    except SpoolUnavailable:
        raise
    except nats.errors.Error as exc:  # before DB_ERRORS: nats' timeout is a TimeoutError
        raise SpoolUnavailable(f"JetStream: {exc or type(exc).__name__}", RETRY_AFTER) from exc
    except DB_ERRORS as exc:
        raise SpoolUnavailable(f"PostgreSQL: {exc or type(exc).__name__}", RETRY_AFTER) from exc


class SharedSuppressions:
    """Mixed into ClusterSpool: what the node and the suppressions API ask of the lists
    (api/suppressions.py ``SuppressionStore``), on the JetStream spool's PostgreSQL store."""

    spool: JetStreamSpool

    async def suppressed(
        self, tenant: str, emails: Sequence[str], groups: Sequence[int] = ()
    ) -> dict[str, str]:
        """email_key -> drop reason (the HTTP door's read before it builds a batch)."""
        return await guarded(self.spool.suppressed(tenant, emails, groups))

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None:
        """Addresses onto lists (the global unsubscribe API, asynchronous bounces), then
        their events: the spool's order (lists.py)."""
        await guarded(self.spool.record(events, suppressions))

    async def suppression_page(
        self,
        tenant: str,
        list_name: str,
        window: tuple[float, float],
        like: str,
        page: tuple[int, int],
    ) -> list[SuppressionRow]:
        return await guarded(self.spool.suppression_page(tenant, list_name, window, like, page))

    async def suppression(self, tenant: str, list_name: str, email: str) -> SuppressionRow | None:
        return await guarded(self.spool.suppression(tenant, list_name, email))

    async def remove_suppressions(
        self, tenant: str, list_name: str, emails: Sequence[str] | None
    ) -> int:
        return await guarded(self.spool.remove_suppressions(tenant, list_name, emails))

    @property
    def asm(self) -> GuardedAsmGroups:
        return GuardedAsmGroups(self.spool.asm)


class GuardedAsmGroups:
    """PostgresAsmGroups (api/asm_groups.py ``AsmStore``) with its failures mapped."""

    def __init__(self, groups: PostgresAsmGroups) -> None:
        self._g = groups

    async def groups(self, tenant: str, ids: list[int] | None = None) -> list[Group]:
        return await guarded(self._g.groups(tenant, ids))

    async def create(self, tenant: str, change: GroupChange, limit: int) -> Group | str:
        return await guarded(self._g.create(tenant, change, limit))

    async def update(self, tenant: str, group_id: int, change: GroupChange) -> Group | str | None:
        return await guarded(self._g.update(tenant, group_id, change))

    async def delete(self, tenant: str, group_id: int) -> bool:
        return await guarded(self._g.delete(tenant, group_id))

    async def add_members(
        self, tenant: str, group_id: int, emails: Sequence[str], created: float
    ) -> bool:
        return await guarded(self._g.add_members(tenant, group_id, emails, created))

    async def remove_member(self, tenant: str, group_id: int, email: str) -> bool:
        return await guarded(self._g.remove_member(tenant, group_id, email))

    async def members(self, tenant: str, group_id: int, page: Page) -> list[str] | None:
        return await guarded(self._g.members(tenant, group_id, page))

    async def search(self, tenant: str, group_id: int, emails: Sequence[str]) -> list[str] | None:
        return await guarded(self._g.search(tenant, group_id, emails))

    async def all_members(self, tenant: str, page: Page) -> list[MemberRow]:
        return await guarded(self._g.all_members(tenant, page))

    async def email_groups(self, tenant: str, email: str) -> list[tuple[Group, bool]]:
        return await guarded(self._g.email_groups(tenant, email))
