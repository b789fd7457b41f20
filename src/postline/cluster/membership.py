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

What a read may change (the chaos test, a NATS server killed under load, saw a live node
taken for gone for a second, 17 of its deliveries taken over while it still sent them,
and a killed node's departure seen only 24 s after the kill):

* A read is believed only when it holds this node's own heartbeat at the revision its
  last acknowledged put returned, or a later one: the read is then at least as current as
  that write. A read that fails, comes back empty (nats-py's ``keys()`` raises the same
  NoKeysError for an empty bucket as for a watcher that saw nothing during a stall) or
  lacks this node's latest heartbeat keeps the last view.
* A node is dropped at once when its key was deleted (a clean stop); when believed reads
  have lacked its key (expired: no heartbeat for the TTL) for GRACE, so that a node whose
  key expired during a stall and that beats again right after it is not dropped; or when
  believed reads have shown the same revision of its key for TTL + BEAT (this node's
  clock): its heartbeats stopped even if the server has not yet expired the key. That
  evidence counts only from believed reads: after a gap in them (a stall) it starts
  again (a stall once made the other node look gone for a second as it ended).
* A node whose own heartbeats fail may be the one cut off: after STALE_BEAT without an
  acknowledged heartbeat it takes over nothing (:meth:`orphaned` is False), and after
  TTL - BEAT (the others may see it gone from TTL) it owns nothing either; when its
  heartbeats are acknowledged again it waits WARM_UP before owning queues, as at start.
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
from nats.js.errors import KeyDeletedError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

BEAT = 1.0  # seconds between heartbeats (and between reads of the live set)
TTL = 5.0  # a node whose heartbeat is this old is gone
FORGET = 3600.0  # seconds a departed node's leases are taken over (deliver/dispatch LEASE_FOR)
MEMBER_FILE = "cluster-member"  # in data_dir: this node's member name in its last run
WARM_UP = 3 * BEAT  # a joining node leases nothing this long (the others learn of it)
STALE_BEAT = 2.5 * BEAT  # own heartbeats failing this long: take nothing over
LOST = TTL - BEAT  # own heartbeats failing this long: own nothing (the others take over)
GRACE = 2 * BEAT  # a live node whose key expired is dropped when it stays away this long


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
        self._beat_ok = time.monotonic()  # when a heartbeat of ours was last acknowledged
        self._beat_rev = 0  # the revision of that heartbeat
        # each other node's heartbeat revision in believed reads, and since when (monotonic)
        self._seen: dict[str, tuple[int, float]] = {}
        self._missing: dict[str, float] = {}  # live nodes whose key went, since when
        self._believed = 0.0  # when the last believed read was made (monotonic)

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

    def beat_age(self) -> float:
        """Seconds since a heartbeat of this node was last acknowledged."""
        return time.monotonic() - self._beat_ok

    def owns(self, tenant: str, domain: str) -> bool:
        if self._ready_at and asyncio.get_running_loop().time() < self._ready_at:
            return False  # still joining (WARM_UP)
        if self.beat_age() > LOST:
            return False  # the others may already count this node gone
        key = (tenant, domain)
        got = self._owned.get(key)
        if got is None:
            got = self._owned[key] = owner(self.live, tenant, domain) == self.node
        return got

    def orphaned(self, tenant: str, domain: str) -> bool:
        """Every earlier owner of the queue (in the views seen, and the world before
        this run: its previous run included) other than this node is gone: leases on
        it that this node did not take are held by nobody alive. False while one of
        them lives (it may still be delivering: taking its leases would send twice).
        False too while this node's own heartbeats fail: it may be the one cut off."""
        if self.beat_age() > STALE_BEAT:
            return False
        key = (tenant, domain)
        got = self._orphaned.get(key)
        if got is None:
            past = {owner(view, tenant, domain) for _, view in self.history if view}
            others = past - {self.node}
            got = self._orphaned[key] = bool(others) and not (others & self.live)
        return got

    async def _beat(self) -> None:
        rev = await self._kv.put(self.node, b"1")
        now = time.monotonic()
        if now - self._beat_ok > LOST:  # the others may have counted this node gone
            log.warning("cluster heartbeats acknowledged again", extra={"node": self.node})
            self._ready_at = asyncio.get_running_loop().time() + WARM_UP
            self._owned.clear()
        self._beat_ok, self._beat_rev = now, rev

    async def _keys(self) -> set[str]:
        """The keys in the bucket (at join: an empty bucket is no error there)."""
        try:
            return set(await self._kv.keys())
        except NoKeysError:
            return set()

    async def _heartbeats(self) -> tuple[dict[str, int], set[str]] | None:
        """Every node's heartbeat revision and the nodes whose key was deleted (a clean
        stop), or None when the read is not to be believed (it does not hold this node's
        last acknowledged heartbeat). Asked of the stream's leader (stream info with its
        subjects, then each key), as the heartbeats are written: no consumer is created
        (nats-py's ``keys()`` creates one per call, and after a NATS server was killed
        creating it timed out again and again: the node never saw the other one go)."""
        kv = self._kv
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}>")
        keys = [k.removeprefix(kv._pre) for k in (info.state.subjects or {})]
        got = await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True)
        revs: dict[str, int] = {}
        deleted: set[str] = set()
        for key, entry in zip(keys, got, strict=True):
            if isinstance(entry, KeyDeletedError):
                deleted.add(key)
            elif isinstance(entry, NotFoundError):
                continue  # expired since the stream info
            elif isinstance(entry, BaseException):
                raise entry
            else:
                revs[key] = entry.revision or 0
        if revs.get(self.node, 0) < self._beat_rev:
            return None
        return revs, deleted

    def _judge(self, revs: dict[str, int], deleted: set[str], now: float) -> frozenset[str]:
        """The live set from a believed read. Evidence against a node counts only from
        believed reads: after a gap in them (NATS stalled for everyone, the node's
        heartbeats too) it starts again, so a stall does not make every node look gone."""
        gap = now - self._believed > 2 * BEAT
        self._believed = now
        seen: dict[str, tuple[int, float]] = {}
        for node, rev in revs.items():
            old = self._seen.get(node)
            since = old[1] if old is not None and old[0] == rev and not gap else now
            if node != self.node and now - since <= TTL + BEAT:  # else: stopped beating
                seen[node] = (rev, since)
        missing: dict[str, float] = {}
        for node in self.live - set(revs) - deleted - {self.node}:  # expired, not deleted
            first = now if gap else self._missing.get(node, now)
            if now - first < GRACE:  # its heartbeat may be back in a moment (a stall)
                missing[node] = first
        self._seen, self._missing = seen, missing
        return frozenset(seen) | frozenset(missing) | {self.node}

    async def _read(self) -> None:
        read = await self._heartbeats()
        if read is None:
            return  # not current: keep the last view
        self._change(self._judge(*read, time.monotonic()))

    def _change(self, live: frozenset[str]) -> None:
        if live != self.live:
            log.info("cluster nodes changed", extra={"nodes": sorted(live), "node": self.node})
            self.history.append((time.monotonic(), self.live))
            self.live = live
            self._owned.clear()
            self._orphaned.clear()

    async def _run(self) -> None:
        """Heartbeats and reads in loops of their own: a read that hangs (NATS stalled)
        must not hold back this node's heartbeat, or the others count it gone."""
        beats = asyncio.get_running_loop().create_task(self._beats())
        try:
            while True:
                await asyncio.sleep(BEAT)
                cutoff = time.monotonic() - FORGET
                if self.history and self.history[0][0] < cutoff:
                    self.history = [(t, v) for t, v in self.history if t >= cutoff]
                    self._orphaned.clear()
                try:
                    await asyncio.wait_for(self._read(), 2 * BEAT)
                except Exception as exc:  # keep the last view, read again
                    log.warning("cluster nodes unknown", extra={"error": str(exc) or repr(exc)})
        finally:
            await cancel_and_wait(beats)

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            try:
                await asyncio.wait_for(self._beat(), TTL)
            except Exception as exc:  # NATS away: reads are not believed meanwhile
                log.warning("cluster heartbeat failed", extra={"error": str(exc) or repr(exc)})

    async def leave(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            await self._kv.delete(self.node)  # the others take its queues over at once
