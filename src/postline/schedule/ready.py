"""The ready tier of one destination site: a bounded window of deliveries in memory.

KumoMTA's *ready queue*: work leased from the spool waits here for a connection. The window
bounds memory per site (``delivery.window`` deliveries, ready + in flight); the backlog
stays in the spool. Within a site, tenants take turns (round robin by message), so one
tenant's million-message campaign does not starve another tenant's password resets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postline.schedule.fairness import TenantRoundRobin
from postline.spool.interface import Lease

if TYPE_CHECKING:
    from postline.model.mail import MailBody, Personalization
    from postline.model.relay import RelayMessage
from postline.model.size import SizeBound


@dataclass(slots=True)
class MessageMeta:
    """What every event of a message carries, decoded once per message."""

    sg_message_id: str
    smtp_id: str
    categories: list[str] | None
    custom_args: dict[str, str] | None


@dataclass(slots=True)
class Job:
    """One message to one domain: its recipients there go in one SMTP transaction."""

    tenant: str
    domain: str
    message_id: int
    leases: list[Lease]
    body: bytes
    personalization: bytes
    meta: MessageMeta
    since: float = 0.0
    # The stored rows decoded when the job was loaded (None: decode at render, which raises
    # for a corrupt row); the body and its size bound are shared by the jobs of one batch.
    decoded: tuple[MailBody, Personalization, SizeBound] | None = None
    # A relayed message (model/relay.py): ``body`` is the message as received and this its
    # per-message part; delivered as received (deliver/render_raw.py), never re-rendered.
    relay: RelayMessage | None = None

    @property
    def size(self) -> int:
        return len(self.leases)


@dataclass(slots=True)
class ReadyQueue:
    window: int
    inflight: int = 0  # deliveries taken by a session and not settled yet
    ready: int = 0  # deliveries waiting here
    _tenants: dict[str, deque[Job]] = field(default_factory=dict)
    _turns: TenantRoundRobin[str] = field(default_factory=TenantRoundRobin)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def room(self) -> int:
        return self.window - self.ready - self.inflight

    def push(self, job: Job) -> None:
        q = self._tenants.get(job.tenant)
        if q is None:
            q = self._tenants[job.tenant] = deque()
            self._turns.add(job.tenant)
        q.append(job)
        self.ready += job.size
        self._event.set()

    def take(self) -> Job | None:
        """The next job, tenants in round robin; counts it as in flight."""
        tenant = self._turns.next_tenant()
        if tenant is None:
            return None
        q = self._tenants[tenant]
        job = q.popleft()
        if not q:
            del self._tenants[tenant]
            self._turns.remove(tenant)
        self.ready -= job.size
        self.inflight += job.size
        if not self._tenants:
            self._event.clear()
        return job

    async def wait_take(self, timeout: float) -> Job | None:
        job = self.take()
        if job is not None or timeout <= 0:
            return job
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return None
        return self.take()

    def drain(self) -> list[Job]:
        """Remove every waiting job (suspension, shutdown); they are not in flight."""
        jobs = [job for q in self._tenants.values() for job in q]
        self._tenants.clear()
        self._turns = TenantRoundRobin()
        self._event.clear()
        self.ready = 0
        return jobs

    def wake_all(self) -> None:
        """Wake every session waiting for work (shutdown): they find none and leave."""
        self._event.set()

    def settled(self, n: int) -> None:
        self.inflight -= n
