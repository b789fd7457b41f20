"""Several datacenters: each a NATS cluster of its own JetStream domain, joined by
leafnodes; each datacenter's streams mirrored into the others (issue 15 item 6).

Why leafnodes with domains, not a gateway super-cluster (bench/multidc_nats.py, measured
on nats-server 2.9.10): in a super-cluster the JetStream meta group spans every server of
both datacenters, so with one datacenter lost (or the link between them cut) the other
holds 3 of 6 meta votes, no quorum: it still publishes to its streams but can create no
stream and no consumer (timeouts, 503), and a node that restarts cannot open its spool.
With a domain per datacenter each has its own meta group and works alone; an
acknowledgement needs only its own R3 quorum either way (median ~0.5 ms on loopback).

What a node does here (:class:`Link`, started with its spool):

* **discovery**: it answers ``postline.datacenters`` (core NATS, which crosses the
  leafnodes) with its datacenter, and asks the same every DISCOVER seconds; the
  datacenters this domain already mirrors count too (their nodes may all be down);
* **mirrors**: for every other datacenter ``X`` it found, it makes sure this domain holds
  mirrors of X's streams under X's names (``PL_X_SPOOL``, ``PL_X_MSGS``, ``PL_X_EVENTS``,
  ``OBJ_PL_X_BODIES``; a domain is its own namespace), fed across the leafnode
  (``external.api = $JS.X.API``). ``postline failover --from X`` reads them (failover.py);
* **the acknowledgement waits for the copy** (:meth:`Link.copied`, after every accept):
  until each peer datacenter's mirrors of this datacenter's streams hold everything these
  streams held when the accept was stored (mirrors copy in order: the mirror's last
  sequence is enough). So a datacenter lost whole loses nothing it acknowledged. A peer
  that does not confirm within SYNC_WAIT (down, or the link cut) is marked down and
  accepts stop waiting for it until it answers again: the datacenter keeps accepting with
  its own R3 copy only, and says so in a warning. Mail acknowledged while a peer is down
  is lost only if this datacenter is then lost too before the mirrors catch up. Cost
  (bench/multidc_accept.py): a 1-recipient accept 2.7 -> 6.4 ms median on loopback, and
  about two round trips between the datacenters over a WAN (20 ms one way: 98 ms);
  batches of 100 cost nothing measurable; the rate per client is in-flight / latency;
* **fence**: if a peer ran ``postline failover --from`` this datacenter after this
  datacenter's spool stream was made (KV ``failover.<this>`` in the peer's STATE), this
  datacenter's mail is the peer's now: ``fenced_by`` is set and linked.py accepts and
  delivers nothing (a node that ran on through a split, or came back with its old store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from postline.backends.jetstream.records import Names, kv_key
from postline.backends.jetstream.setup import ensure_stream
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

SUBJECT = "postline.datacenters"  # request: every node answers with its datacenter
DISCOVER = 2.0  # seconds between looks for datacenters (and for a down peer's return)
ANSWERS = 0.3  # seconds a look collects answers
SYNC_WAIT = 2.0  # seconds an accept waits for a peer's copy before the peer counts as down
POLL = 0.01  # seconds between probes of a peer's mirrors while accepts wait (at most)
POLL_FIRST = 0.001  # the first pause; doubled up to POLL (a mirror on a LAN is quick)


def prefix(datacenter: str) -> str:
    return f"PL_{datacenter}"


def copied_streams(datacenter: str) -> list[str]:
    """The streams of a datacenter that its peers mirror (spool, messages and bodies,
    large bodies, events)."""
    names = Names(prefix(datacenter))
    return [names.spool, names.msgs, names.events, f"OBJ_{names.bodies}"]


def mirror_config(datacenter: str, stream: str, replicas: int, max_age: float) -> api.StreamConfig:
    """A mirror in this domain of ``stream`` of ``datacenter`` (same name). The SPOOL and
    MSGS mirrors keep the last message per subject as their origins do; every mirror
    drops what is older than the spool's max age (a mirror does not copy purges: the
    origin's pruned events and deleted bodies would stay forever). ``allow_rollup_hdrs``:
    the Object Store writes an object's meta with ``Nats-Rollup``, which a mirror without
    it refuses, and then copies nothing more (measured on 2.9.10: stuck one message
    short, so every accept after a large body waited SYNC_WAIT)."""
    source = api.StreamSource(name=stream, external=api.ExternalStream(api=f"$JS.{datacenter}.API"))
    names = Names(prefix(datacenter))
    per_subject = 1 if stream in (names.spool, names.msgs) else -1
    return api.StreamConfig(
        name=stream, mirror=source, num_replicas=replicas, storage=api.StorageType.FILE,
        max_age=max_age, max_msgs_per_subject=per_subject, allow_rollup_hdrs=True,
    )  # fmt: skip


async def ensure_mirrors(
    js: JetStreamContext, datacenter: str, replicas: int, max_age: float
) -> None:
    """Mirrors of ``datacenter``'s streams in the domain ``js`` talks to (idempotent)."""
    for stream in copied_streams(datacenter):
        await ensure_stream(js, mirror_config(datacenter, stream, replicas, max_age))


class FailoverMark(msgspec.Struct):
    at: float = 0.0  # when ``postline failover --from <this datacenter>`` ran (epoch s)


def failover_key(lost: str) -> str:
    """The KV key (the failing-over datacenter's STATE bucket) of a failover from ``lost``."""
    return "failover." + kv_key(lost)


FENCED = (
    "datacenter failed this one over (postline failover): this datacenter accepts and "
    "delivers nothing, its mail is the other's now. Empty this datacenter's NATS "
    "JetStream store (its streams hold mail the other datacenter delivers) and restart"
)


@dataclass
class Peer:
    name: str
    js: JetStreamContext  # the peer's domain
    up: bool = False  # its mirrors of this datacenter's streams answer
    mirrored: bool = False  # this domain holds mirrors of its streams


@dataclass
class Link:
    nc: Client
    js: JetStreamContext
    datacenter: str
    replicas: int
    max_age: float
    peers: dict[str, Peer] = field(default_factory=dict)
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sub: Subscription | None = None
    fenced_by: str | None = None  # a peer that failed this datacenter over (FENCED)

    @classmethod
    async def start(
        cls,
        nc: Client,
        js: JetStreamContext,
        datacenter: str,
        replicas: int,
        max_age: float,
        look_first: bool = False,
    ) -> Link:
        """With ``look_first``, one look for peers before returning (ANSWERS and the
        checks: the node learns it was failed over before it delivers anything)."""
        link = cls(nc, js, datacenter, replicas, max_age)
        link._sub = await nc.subscribe(SUBJECT, cb=link._answer)
        if look_first:
            with contextlib.suppress(Exception):  # NATS away: the loop looks again
                await asyncio.wait_for(link.discover(), 10.0)
        loop = asyncio.get_running_loop()
        look = loop.create_task(link._discovering(wait_first=look_first))
        link._tasks = [look, loop.create_task(link._pump())]
        return link

    async def _answer(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, self.datacenter.encode())

    async def discover(self) -> None:
        """Ask every node for its datacenter; mirror new peers; see which peers are up."""
        inbox = self.nc.new_inbox()
        found: set[str] = set()

        async def on_answer(msg: Msg) -> None:
            found.add(msg.data.decode(errors="replace"))

        sub = await self.nc.subscribe(inbox, cb=on_answer)
        try:
            await self.nc.publish(SUBJECT, b"", reply=inbox)
            await asyncio.sleep(ANSWERS)
        finally:
            await sub.unsubscribe()
        with contextlib.suppress(Exception):  # (a listing that fails: the answers alone)
            found |= await self._mirrored()
        for name in sorted(found - {self.datacenter}):
            if name not in self.peers:
                log.info("datacenter found", extra={"datacenter": name})
                peer_js = self.nc.jetstream(domain=name, timeout=SYNC_WAIT)
                self.peers[name] = Peer(name, peer_js)
        for peer in self.peers.values():
            await self._check(peer)

    async def _mirrored(self) -> set[str]:
        """Datacenters this domain mirrors already: found even while none of their
        nodes runs to answer (the accepts here wait for their copies all the same)."""
        out = set()
        for info in await self.js.streams_info():
            name, mirror = info.config.name or "", info.config.mirror
            if mirror is not None and mirror.external is not None and name.endswith("_SPOOL"):
                api_prefix = mirror.external.api or ""  # $JS.<datacenter>.API
                if api_prefix.startswith("$JS.") and name == f"PL_{api_prefix[4:-4]}_SPOOL":
                    out.add(api_prefix[4:-4])
        return out

    async def _check(self, peer: Peer) -> None:
        if not peer.mirrored:
            try:
                await ensure_mirrors(self.js, peer.name, self.replicas, self.max_age)
                peer.mirrored = True
            except Exception as exc:
                log.warning("cannot mirror a datacenter", extra={"datacenter": peer.name,
                            "error": str(exc) or type(exc).__name__})  # fmt: skip
        if not peer.up:  # up once its mirrors reached where ours were just before
            streams = copied_streams(self.datacenter)
            try:
                heads = await self._heads(self.js, streams)
                got = await self._heads(peer.js, streams)
            except NotFoundError:
                return  # it has not mirrored this datacenter yet (its nodes will)
            except Exception:
                return  # down or cut off: accepts do not wait for it
            if all(g >= h for g, h in zip(got, heads, strict=True)):
                # (still catching up after a split: accepts would wait on it; next look)
                peer.up = True
                log.warning("datacenter copies this one's streams",
                            extra={"datacenter": peer.name})  # fmt: skip
        await self._fence(peer)

    async def _fence(self, peer: Peer) -> None:
        """Did the peer fail this datacenter over after this datacenter's spool stream
        was made? Then its mail is the peer's now (linked.py stops accepting and
        delivering); a store emptied since has a younger stream and is not fenced."""
        if self.fenced_by is not None:
            return
        try:
            kv = await peer.js.key_value(Names(prefix(peer.name)).state)
            entry = await kv.get(failover_key(self.datacenter))
            info = await self.js.stream_info(Names(prefix(self.datacenter)).spool)
        except Exception:
            return  # no failover of this datacenter there (or the peer is away)
        mark = msgspec.json.decode(entry.value or b"{}", type=FailoverMark)
        created = info.created.timestamp() if info.created is not None else 0.0
        if mark.at > created:
            self.fenced_by = peer.name
            log.error(FENCED, extra={"datacenter": peer.name, "failover_at": mark.at})

    async def _discovering(self, wait_first: bool = False) -> None:
        """Every DISCOVER (the first look at once unless the start made it)."""
        while True:
            if wait_first:
                await asyncio.sleep(DISCOVER)
            wait_first = True
            try:
                await self.discover()
            except Exception as exc:
                log.warning("datacenter discovery failed", extra={"error": str(exc)})

    # -- the acknowledgement waits for the copy --------------------------------------------

    async def copied(self) -> None:
        """Return once every up peer's mirrors hold what this datacenter's streams held
        now (or the peer was marked down after SYNC_WAIT)."""
        if not any(p.up for p in self.peers.values()):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake.set()
        await fut

    async def _pump(self) -> None:
        """Rounds for the accepts waiting: each round reads this datacenter's heads, then
        waits until each up peer's mirrors reach them. Accepts arriving meanwhile go into
        the next round (their data may be above the heads read), which starts at once, or
        POLL later while other rounds run (fewer requests under load), without waiting
        for this one: rounds overlap, so across a WAN the
        accept rate is not one round per round trip."""
        rounds: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._waiters = self._waiters, []
                if batch:
                    task = asyncio.get_running_loop().create_task(self._round(batch))
                    rounds.add(task)
                    task.add_done_callback(rounds.discard)
                    if len(rounds) > 1:  # under load: gather the next round's accepts
                        await asyncio.sleep(POLL)
        finally:
            for task in list(rounds):
                task.cancel()

    async def _round(self, batch: list[asyncio.Future[None]]) -> None:
        try:
            heads = await self._heads(self.js, copied_streams(self.datacenter))
            peers = [p for p in self.peers.values() if p.up]
            await asyncio.gather(*(self._until(p, heads) for p in peers))
        except Exception as exc:  # our own NATS away: the accept itself failed too
            log.warning("cannot read this datacenter's streams", extra={"error": str(exc)})
        finally:
            for f in batch:
                if not f.done():
                    f.set_result(None)

    async def _heads(self, js: JetStreamContext, streams: Sequence[str]) -> list[int]:
        infos = await asyncio.gather(*(js.stream_info(s) for s in streams))
        return [int(i.state.last_seq) for i in infos]

    async def _until(self, peer: Peer, heads: list[int]) -> None:
        """Probe the peer's mirrors every POLL without waiting for the answers (probes
        overlap): across a WAN the wait is then about the mirror's lag plus one round
        trip, where probing one after the other took 3-4 round trips (bench)."""
        streams = copied_streams(self.datacenter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_WAIT
        reached = asyncio.Event()

        async def probe() -> None:
            with contextlib.suppress(Exception):  # a timeout or an error: the deadline
                got = await asyncio.wait_for(self._heads(peer.js, streams), SYNC_WAIT)
                if all(g >= h for g, h in zip(got, heads, strict=True)):
                    reached.set()

        probes: set[asyncio.Task[None]] = set()
        pause = POLL_FIRST
        try:
            while not reached.is_set():
                if loop.time() > deadline:
                    peer.up = False
                    log.warning(
                        "datacenter did not confirm its copy: acknowledging with this "
                        "datacenter's copy only until it answers again",
                        extra={"datacenter": peer.name, "waited": SYNC_WAIT},
                    )
                    return
                task = loop.create_task(probe())
                probes.add(task)
                task.add_done_callback(probes.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reached.wait(), pause)
                pause = min(pause * 2, POLL)
        finally:
            for task in list(probes):
                task.cancel()

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
