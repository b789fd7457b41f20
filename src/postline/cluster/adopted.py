"""A lost datacenter's event consumers, run here over the mirror of its event stream,
when both datacenters store their events in one PostgreSQL database (origins.py).

With a database per datacenter nothing is needed: this datacenter's log holds the lost
one's events (imported while both were up, the rest by ``postline failover``) and its
own consumers store them. With one database, this datacenter's consumers skip the lost
datacenter's events (it stored them itself, under its own offsets), so what the lost
datacenter had not yet stored, posted or counted when it went would never be. Here, once
``postline failover --from DC`` has run in this datacenter (its mark, ``failover.<DC>``,
is in this datacenter's STATE bucket) and DC is registered in this database, the pipeline
worker also runs DC's consumers — activity ``activity/<DC>``, statistics ``stats/<DC>``,
each webhook's dispatcher with ledger ``log = DC`` — over this datacenter's mirror of
DC's event stream: mirrors keep the stream's sequence numbers, so the consumers go on
from DC's own offsets, exactly once for activity and statistics (their offset rows are
locked in each transaction) and from the ledger's newest range for webhooks (one
dispatcher per webhook and log in the cluster: its advisory lock). Should DC come back
(fenced), its own workers and this one take turns on the same rows and locks.

They keep running once started (the mirror no longer grows: they idle at its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from postline.api.prometheus import Family
from postline.backends.jetstream.events import JetStreamEventLog, PruneMark
from postline.backends.jetstream.publish import Publisher
from postline.backends.jetstream.records import Names, kv_key
from postline.backends.postgres.conn import connect
from postline.cluster.multidc import failover_key, prefix
from postline.cluster.origins import registered_with
from postline.config import Config
from postline.events.pipeline import Pipeline
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

CHECK_EVERY = 2.0  # seconds between looks for a failover mark
TIMEOUT = 5.0


class MirrorEventLog(JetStreamEventLog):
    """Datacenter ``peer``'s event log as mirrored here, read only. Its offsets are the
    peer's own; committed offsets (what the consumer runner keeps beside the stores'
    own) go under ``offset.adopted.<peer>.<consumer>`` in this datacenter's STATE."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, peer: str) -> None:
        super().__init__(js, kv, Names(prefix(peer)), Publisher(js, TIMEOUT))
        self.peer = peer

    def _key(self, consumer: str) -> str:
        return "offset." + kv_key(f"adopted.{self.peer}.{consumer}")

    async def committed(self, consumer: str) -> int:
        try:
            entry = await self._kv.get(self._key(consumer))
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def commit(self, consumer: str, offset: int) -> None:
        await self._kv.put(self._key(consumer), str(offset).encode())

    async def append(self, events: Any) -> None:
        raise RuntimeError(f"the mirror of {self.peer}'s event log is read only")

    async def prune(self, upto: int, before: float, limit: int) -> int:
        return 0  # the mirror has limits of its own; the peer's prune mark is not here

    async def _mark(self) -> tuple[PruneMark, int | None]:
        return PruneMark(), None


def adopted_config(cfg: Config, peer: str) -> Config:
    """``cfg`` as the lost datacenter's: its stores' names (offset rows, ledger log)."""
    assert cfg.cluster is not None
    cluster = msgspec.structs.replace(cfg.cluster, datacenter=peer)
    return msgspec.structs.replace(cfg, cluster=cluster)


class AdoptedLogs:
    """Watches for failovers of datacenters sharing this database; runs their consumers."""

    def __init__(self, cfg: Config, js: JetStreamContext, kv: KeyValue) -> None:
        assert cfg.cluster is not None
        self.cfg, self.js, self.kv = cfg, js, kv
        self.own = cfg.cluster.datacenter
        self.pipelines: dict[str, Pipeline] = {}
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None  # PostgreSQL, for the registrations (origins.py)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def check(self) -> list[str]:
        """Start the consumers of every datacenter failed over here that shares this
        database and is not adopted yet; the ones started."""
        assert self.cfg.cluster is not None
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.cfg.cluster.postgres)
        try:
            peers = await registered_with(self._conn) - {self.own}
        except BaseException:
            await self._drop_conn()  # a fresh one next time
            raise
        started = []
        for peer in sorted(peers):
            if peer in self.pipelines:
                continue
            try:
                await self.kv.get(failover_key(peer))
            except KeyNotFoundError:
                continue
            pipeline = Pipeline(
                adopted_config(self.cfg, peer), MirrorEventLog(self.js, self.kv, peer),
                adopted=True,
            )  # fmt: skip
            try:
                await pipeline.start(None)
            except BaseException:
                await pipeline.close()  # the components it started; tried again next time
                raise
            self.pipelines[peer] = pipeline
            started.append(peer)
            log.warning(
                "datacenter %s was failed over here and shares this database: its event"
                " consumers (activity, stats, webhooks) run here now, from the mirror of"
                " its event log",
                peer,
            )
        return started

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or PostgreSQL away: look again later
                log.warning("adopted event logs: check failed (%s)", exc)
            await asyncio.sleep(CHECK_EVERY)

    def families(self, now: float) -> list[Family]:
        samples = []
        for peer, pipeline in self.pipelines.items():
            lag = max((r.lag_seconds(now) for r in pipeline.runners.all()), default=0.0)
            samples.append(((("datacenter", peer),), lag))
        return [
            Family(
                "adopted_event_log_lag_seconds",
                "gauge",
                "Per datacenter failed over here that shares this PostgreSQL database (its"
                " consumers run here, over the mirror of its event log): age of the oldest"
                " event its slowest consumer has read and not yet handled.",
                tuple(samples),
            )
        ]

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for pipeline in self.pipelines.values():
            await pipeline.close()
        self.pipelines.clear()
        await self._drop_conn()

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def adopted_watcher(cfg: Config, events: Any) -> AdoptedLogs | None:
    """The watcher of a pipeline in cluster mode, in its worker or in the node
    (``events``: the pipeline's NodeEventLog, node_log.py); None in the embedded mode."""
    if not cfg.clustered:
        return None
    log_: JetStreamEventLog = events.events
    return AdoptedLogs(cfg, log_.js, log_.kv)
