"""The cluster spool of a datacenter linked to others (multidc.py): an accept is
acknowledged once this datacenter's R3 streams stored it *and* every reachable peer
datacenter's mirrors hold it, so losing this datacenter whole loses nothing acknowledged.

``cluster/backends.py``'s ``open_spool`` makes this instead of a plain ClusterSpool and
calls :meth:`LinkedSpool.link`; with no other datacenter around (one datacenter, or the
leafnodes down) it behaves exactly like one, apart from answering discovery requests.
"""

from __future__ import annotations

from typing import Any

from postline.cluster.backends import ClusterSpool
from postline.cluster.multidc import Link
from postline.config import ClusterConfig
from postline.spool.interface import AcceptBatch


class LinkedSpool(ClusterSpool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peers: Link | None = None

    async def link(self, cluster: ClusterConfig, max_age: float) -> None:
        """Start answering and looking for other datacenters (and mirroring them)."""
        try:
            self.peers = await Link.start(
                self.spool._nc, self.spool.log.js, cluster.datacenter,
                cluster.stream_replicas, max_age,
            )  # fmt: skip
        except BaseException:
            await self.close()
            raise

    async def accept(self, batch: AcceptBatch) -> None:
        await super().accept(batch)
        if self.peers is not None:
            await self.peers.copied()

    async def close(self) -> None:
        if self.peers is not None:
            await self.peers.close()
        await super().close()
