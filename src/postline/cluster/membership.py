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

A member is one run of a node: ``<node id>-<random>``, new at every start and kept in
``<data_dir>/cluster-member``. A node restarted after a crash reads the member it was and
counts it as departed, so it takes over the leases its previous run held, even when it
is the only node or came back before anyone saw it go (with one name per node those
waited out the engine's lease, an hour).

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
import secrets
import time
from pathlib import Path

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NoKeysError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("postline.cluster")

BEAT = 1.0  # seconds between heartbeats (and between reads of the live set)
TTL = 5.0  # a node whose heartbeat is this old is gone
FORGET = 3600.0  # seconds a departed node's leases are taken over (deliver/engine LEASE_FOR)
MEMBER_FILE = "cluster-member"  # in data_dir: this node's member name in its last run
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
        self.node = node  # this run's member name
        self.live: frozenset[str] = frozenset({node})
        # the live sets seen (with when they ended), the world before this run first: a
        # queue's leases were held by its owners in these views. Forgotten after FORGET
        # (the engine's lease time: by then the leases have run out anyway).
        self.history: list[tuple[float, frozenset[str]]] = []
        self._task: asyncio.Task[None] | None = None
        self._owned: dict[tuple[str, str], bool] = {}
        self._orphaned: dict[tuple[str, str], bool] = {}
        self._ready_at = 0.0  # loop time from which this node may own queues

    @classmethod
    async def join(
        cls, js: JetStreamContext, bucket: str, node: str, replicas: int, data_dir: Path
    ) -> Membership:
        member_file = data_dir / MEMBER_FILE
        try:
            previous = member_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            previous = ""
        member = f"{node}-{secrets.token_hex(3)}"
        tmp = member_file.with_suffix(".tmp")
        tmp.write_text(member + "\n", encoding="ascii")
        tmp.replace(member_file)
        try:
            kv = await js.key_value(bucket)
        except NotFoundError:
            kv = await js.create_key_value(
                api.KeyValueConfig(bucket=bucket, history=1, ttl=TTL, replicas=replicas)
            )
        m = cls(kv, member)
        before = await m._keys() | ({previous} if previous else set())
        m.history.append((time.monotonic(), frozenset(before - {member})))
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
        """Every earlier owner of the queue (in the views seen, and the world before
        this run: its previous run included) other than this node is gone: leases on
        it that this node did not take are held by nobody alive. False while one of
        them lives (it may still be delivering: taking its leases would send twice)."""
        key = (tenant, domain)
        got = self._orphaned.get(key)
        if got is None:
            past = {owner(view, tenant, domain) for _, view in self.history if view}
            others = past - {self.node}
            got = self._orphaned[key] = bool(others) and not (others & self.live)
        return got

    async def _beat(self) -> None:
        await self._kv.put(self.node, b"1")

    async def _keys(self) -> set[str]:
        try:
            return set(await self._kv.keys())
        except NoKeysError:  # an empty bucket (other errors: the caller keeps its view)
            return set()

    async def _read(self) -> None:
        live = frozenset(await self._keys() | {self.node})
        if live != self.live:
            log.info("cluster nodes changed", extra={"nodes": sorted(live), "node": self.node})
            self.history.append((time.monotonic(), self.live))
            self.live = live
            self._owned.clear()
            self._orphaned.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            cutoff = time.monotonic() - FORGET
            if self.history and self.history[0][0] < cutoff:
                self.history = [(t, v) for t, v in self.history if t >= cutoff]
                self._orphaned.clear()
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
