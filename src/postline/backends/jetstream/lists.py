"""The JetStream spool's suppression calls, kept in PostgreSQL (cluster mode's shared store).

JetStream holds the mail and the events; the lists live in PostgreSQL
(backends/postgres/suppressions.py), which every node queries. No transaction spans the
two systems, so each call that writes both orders its writes so that a failure between
them loses nothing (a repeat of either write is harmless: list writes are upserts, event
appends carry content-derived ``Nats-Msg-Id``s, settles are compare-and-set):

* **a settle that suppresses** (a bounce): the suppression first, then the event and the
  delivery's tombstone. PostgreSQL down or a crash before the tombstone: the settle
  raises or never finishes, the lease times out, the delivery is attempted again and its
  bounce suppresses again. The other order could tombstone the delivery and then lose
  the suppression for good. The cost: a settle that then loses its compare-and-set to
  another node (which settled the same delivery) has still listed the address, which
  bounced on this node's attempt.
* **record** (asynchronous bounces, complaints): the suppressions first, then the events;
  the caller (``postline inbound``) sees an exception and retries the whole call.
* **accept with drop_suppressed**: one lookup (one round trip), then the batch is
  published without the dropped recipients. Unlike SQLite there is a window between the
  lookup and the write: an address listed in it is sent to once, as on SendGrid's HTTP
  path. An unknown unsubscribe group raises UnknownGroups before anything is published.

Without a store (``suppressions=None``), every call that needs the lists raises
NotImplementedError rather than send to, or forget, a suppressed address.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from postline.backends.postgres.asm import PostgresAsmGroups
from postline.backends.postgres.suppressions import PostgresSuppressions, SuppressionRow
from postline.spool import drops
from postline.spool.interface import AcceptBatch, Settle, Suppression


class SuppressionCalls:
    """Mixed into JetStreamSpool: the SQLite spool's suppression calls, on PostgreSQL."""

    _lists: PostgresSuppressions | None

    def _store(self) -> PostgresSuppressions:
        if self._lists is None:
            raise NotImplementedError(
                "this JetStream spool was opened without a suppression store (PostgreSQL)"
            )
        return self._lists

    async def _drop_suppressed(self, batch: AcceptBatch) -> None:
        """Drop the batch's listed recipients (and its group's members) in place."""
        found = await self._store().suppressed(
            batch.tenant, drops.recipients(batch), drops.groups(batch)
        )
        drops.apply_drops(batch, found)

    async def _suppress_settled(self, settles: Sequence[Settle]) -> None:
        """The suppressions of ``settles``, written before anything else of the settle."""
        sups = [_from_settle(s) for s in settles if s.suppress is not None]
        if sups:
            await self._store().add(sups)

    async def suppressed(
        self, tenant: str, emails: Sequence[str], groups: Sequence[int] = ()
    ) -> dict[str, str]:
        return await self._store().suppressed(tenant, emails, groups)

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
        await self._store().add_suppression(
            tenant, list_name, email, reason=reason, status=status, created=created
        )

    @property
    def asm(self) -> PostgresAsmGroups:
        return self._store().asm

    async def suppression_page(
        self,
        tenant: str,
        list_name: str,
        window: tuple[float, float],
        like: str,
        page: tuple[int, int],
    ) -> list[SuppressionRow]:
        return await self._store().suppression_page(tenant, list_name, window, like, page)

    async def suppression(self, tenant: str, list_name: str, email: str) -> SuppressionRow | None:
        return await self._store().suppression(tenant, list_name, email)

    async def remove_suppressions(
        self, tenant: str, list_name: str, emails: Sequence[str] | None
    ) -> int:
        return await self._store().remove_suppressions(tenant, list_name, emails)


def _from_settle(s: Settle) -> Suppression:
    assert s.suppress is not None
    list_name, reason, status = s.suppress
    when = s.event.ts if s.event is not None else time.time()
    return Suppression(s.lease.tenant, list_name, s.lease.rcpt, reason, status, when)
