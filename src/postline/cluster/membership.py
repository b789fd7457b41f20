"""Which node delivers which queue: live nodes by heartbeat, queues by rendezvous hash.

Why: the JetStream spool takes a delivery with a compare-and-set write
(``Nats-Expected-Last-Subject-Sequence``), which nats-server before 2.9.21 checks before
the Raft proposal rather than inside it (nats-io/nats-server#4320): on Debian's 2.9.10 with
R3 streams, two concurrent lease writes of one delivery both succeeded in 138 of 200
tries here, and two nodes delivered the same mail. So each queue (tenant x recipient
domain) has one owner among the live nodes and only its owner leases it; the CAS stays
as a second line. Work still spreads over the nodes (queues hash over them), and when a
node leaves (its heartbeat stops; a clean stop deletes it at once) its queues move to
the others.

A node that joins owns nothing for its first WARM_UP seconds, until every other node has
read the live set with it in (each reads every BEAT seconds): without that wait, mail
sent while a node started was delivered twice (1 of 6 runs of two nodes, 60 recipients)
by the new node and an old one that still thought itself the owner.

Live nodes: KV bucket ``<prefix>_NODES`` (replicated like the streams, max age TTL),
one key per node, put every BEAT seconds; a node is live while its key is there. Each
node reads the set every BEAT seconds. While views differ (a node joined or left within
the last TTL) two nodes may both own a queue for a moment: duplicates are possible then,
never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NoKeysError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("postline.cluster")

BEAT = 1.0  # seconds between heartbeats (and between reads of the live set)
TTL = 5.0  # a node whose heartbeat is this old is gone
FORGET = 3600.0  # seconds a departed node's leases are taken over (deliver/engine LEASE_FOR)
WARM_UP = 3 * BEAT  # a joining node leases nothing this long (the others learn of it)


def owner(nodes: frozenset[str] | set[str], tenant: str, domain: str) -> str:
    """The node that delivers the queue: rendezvous (highest random weight) hashing, so
    a node joining or leaving moves only its share of the queues."""
    queue = f"{tenant}\0{domain}".encode()

    def weight(node: str) -> bytes:
        return hashlib.blake2b(node.encode() + b"\0" + queue, digest_size=8).digest()

    return max(sorted(nodes), key=weight)


class Membership:
    def __init__(self, kv: KeyValue, node: str) -> None:
        self._kv = kv
        self.node = node
        self.live: frozenset[str] = frozenset({node})
        # nodes seen live, then gone -> when: their leases are void; forgotten after
        # FORGET (the engine's lease time: by then their leases have run out anyway)
        self.departed: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._owned: dict[tuple[str, str], bool] = {}
        self._ready_at = 0.0  # loop time from which this node may own queues

    @classmethod
    async def join(cls, js: JetStreamContext, bucket: str, node: str, replicas: int) -> Membership:
        try:
            kv = await js.key_value(bucket)
        except NotFoundError:
            kv = await js.create_key_value(
                api.KeyValueConfig(bucket=bucket, history=1, ttl=TTL, replicas=replicas)
            )
        m = cls(kv, node)
        m._ready_at = asyncio.get_running_loop().time() + WARM_UP
        await m._beat()
        await m._read()
        m._task = asyncio.get_running_loop().create_task(m._run())
        return m

    def owns(self, tenant: str, domain: str) -> bool:
        if self._ready_at and asyncio.get_running_loop().time() < self._ready_at:
            return False  # still joining (WARM_UP)
        key = (tenant, domain)
        got = self._owned.get(key)
        if got is None:
            got = self._owned[key] = owner(self.live, tenant, domain) == self.node
        return got

    def orphaned(self, tenant: str, domain: str) -> bool:
        """The queue's owner before the last departures is gone: the leases found on it
        were its (or older) and nobody works on them any more."""
        if not self.departed:
            return False
        return owner(self.live | set(self.departed), tenant, domain) in self.departed

    async def _beat(self) -> None:
        await self._kv.put(self.node, b"1")

    async def _read(self) -> None:
        try:
            keys = set(await self._kv.keys())
        except NoKeysError:  # an empty bucket (other errors: the last view stays)
            keys = set()
        live = frozenset(keys | {self.node})
        if live != self.live:
            log.info("cluster nodes changed", extra={"nodes": sorted(live), "node": self.node})
            now = time.monotonic()
            for gone in self.live - live:
                self.departed[gone] = now
            for back in live:
                self.departed.pop(back, None)
            self.live = live
            self._owned.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            cutoff = time.monotonic() - FORGET
            for node in [n for n, t in self.departed.items() if t < cutoff]:
                del self.departed[node]
                self._owned.clear()
            try:
                await self._beat()
                await self._read()
            except Exception as exc:  # NATS away: keep the last view, try again
                log.warning("cluster heartbeat failed", extra={"error": str(exc)})

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._kv.delete(self.node)  # the others take its queues over at once
