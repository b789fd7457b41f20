"""Fairness between tenants sending to one destination site: deficit round robin.

Strategy: deficit round robin (Shreedhar & Varghese, 1995) with the message as the unit
of cost, so it reduces to weighted round robin: the tenant at the head of the ring gets
``weight`` consecutive picks (its quantum), then moves to the back. Only tenants with
due work are in the ring — the caller ``add``s a tenant when its queue for this site
gets due work and ``remove``s it when the queue runs dry, and DRR forgets the unused
quantum of an emptied queue. One tenant's million-message backlog therefore cannot
starve another tenant's ten messages: with ``W`` the sum of weights, any tenant in the
ring is picked at least ``weight`` times in every ``2 * W`` consecutive picks, and a
newly added tenant is picked within ``W`` picks. This is the per-tenant counterpart of
Postfix's round robin across destinations and of qmgr admitting incoming and deferred
mail alternately so that a backlog cannot starve new mail.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class TenantRoundRobin(Generic[T]):
    """Weighted round robin over the tenants that have due work for one site."""

    def __init__(self) -> None:
        self._ring: OrderedDict[T, int] = OrderedDict()  # tenant -> weight; head first
        self._credit = 0  # picks left in the head tenant's current quantum

    def add(self, tenant: T, weight: int = 1) -> None:
        """Put ``tenant`` in the ring (at the back), or update its weight if present.

        A new weight takes effect from the tenant's next turn; a quantum in progress runs out.
        """
        if weight < 1:
            raise ValueError(f"weight must be >= 1 (got {weight})")
        self._ring[tenant] = weight

    def remove(self, tenant: T) -> None:
        """Take ``tenant`` out (its queue ran dry); a tenant not present is ignored."""
        if tenant not in self._ring:
            return
        if self._is_head(tenant):
            self._credit = 0
        del self._ring[tenant]

    def next_tenant(self) -> T | None:
        """The tenant whose message goes next, or ``None`` when no tenant has work."""
        if not self._ring:
            return None
        head = next(iter(self._ring))
        if self._credit == 0:
            self._credit = self._ring[head]
        self._credit -= 1
        if self._credit == 0:
            self._ring.move_to_end(head)
        return head

    def weight(self, tenant: T) -> int:
        return self._ring[tenant]

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._ring

    def __len__(self) -> int:
        return len(self._ring)

    def _is_head(self, tenant: T) -> bool:
        return next(iter(self._ring)) == tenant
