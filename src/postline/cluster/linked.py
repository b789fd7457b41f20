"""The cluster spool of a datacenter linked to others (multidc.py): an accept is
acknowledged once this datacenter's R3 streams stored it *and* every reachable peer
datacenter's mirrors hold it, so losing this datacenter whole loses nothing acknowledged.
One node of the datacenter (the owner of IMPORTER among the live nodes) also imports
the peers' events into this datacenter's log (imports.py), every IMPORT_EVERY seconds.
A datacenter that a peer failed over (``postline failover --from`` this one, after
this datacenter's spool was made) accepts nothing (503 / 452) and delivers nothing,
whether its nodes kept running through a split or came back with their old store:
otherwise everything the peer took over would be sent twice.

``cluster/backends.py``'s ``open_spool`` makes this instead of a plain ClusterSpool and
calls :meth:`LinkedSpool.link`; with no other datacenter around (one datacenter, or the
leafnodes down) it behaves exactly like one, apart from answering discovery requests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from postline.cluster.backends import ClusterSpool
from postline.cluster.imports import import_events
from postline.cluster.multidc import Link
from postline.config import ClusterConfig
from postline.spool.interface import AcceptBatch, Lease, QueueInfo, SpoolUnavailable
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

IMPORTER = "\0datacenters"  # the pseudo tenant whose queue owner imports a peer's events
IMPORT_EVERY = 1.0  # seconds between imports of the peers' new events
IMPORT_LIMIT = 4096  # events messages imported per peer per round


class LinkedSpool(ClusterSpool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peers: Link | None = None
        self._importer: asyncio.Task[None] | None = None

    async def link(self, cluster: ClusterConfig, max_age: float) -> None:
        """Start answering and looking for other datacenters (and mirroring them); the
        first look before the node goes on, so a datacenter that was failed over learns
        it before it delivers anything."""
        try:
            self.peers = await Link.start(
                self.spool._nc, self.spool.log.js, cluster.datacenter,
                cluster.stream_replicas, max_age, look_first=True,
            )  # fmt: skip
        except BaseException:
            await self.close()
            raise
        self._importer = asyncio.get_running_loop().create_task(self._importing(self.peers))

    def _fenced(self) -> str | None:
        return self.peers.fenced_by if self.peers is not None else None

    async def accept(self, batch: AcceptBatch) -> None:
        if by := self._fenced():
            raise SpoolUnavailable(f"datacenter {by} took this datacenter's mail over", 60)
        await super().accept(batch)
        if self.peers is not None:
            await self.peers.copied()

    # A datacenter another one failed over (multidc.FENCED) delivers nothing: its mail
    # is being delivered there. The engine finds no queue, leases and expires nothing.

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        if self._fenced():
            return []
        return await super().lease(tenant, domain, now, limit, lease_for)

    async def queues(self, now: float) -> list[QueueInfo]:
        return [] if self._fenced() else await super().queues(now)

    async def next_due(self, tenant: str, domain: str) -> float | None:
        return None if self._fenced() else await super().next_due(tenant, domain)

    async def expire(self, now: float, limit: int) -> list[Lease]:
        return [] if self._fenced() else await super().expire(now, limit)

    async def _importing(self, link: Link) -> None:
        events = self.spool.log
        kv = await events.js.key_value(events.names.state)
        while True:
            await asyncio.sleep(IMPORT_EVERY)
            for peer in list(link.peers.values()):
                if not peer.mirrored or not self.members.owns(IMPORTER, peer.name):
                    continue
                try:
                    await import_events(
                        events.js, kv, events.names, events.pub, peer.name, IMPORT_LIMIT
                    )
                except Exception as exc:  # NATS away: the next round goes on from the KV
                    log.warning("cannot import a datacenter's events",
                                extra={"datacenter": peer.name, "error": str(exc)})  # fmt: skip

    async def close(self) -> None:
        if self._importer is not None:
            await cancel_and_wait(self._importer)
        if self.peers is not None:
            await self.peers.close()
        await super().close()
