"""The backends a node opens, chosen by ``[cluster]``: one place for the node
(runtime.py), its event pipeline worker (events/worker.py) and ``postline keys``.

Without ``[cluster]`` (or with ``nats`` and ``postgres`` empty): the embedded SQLite
spool, event log and key store in ``data_dir``, unchanged. With it:

* **spool and event log**: :class:`ClusterSpool`, the JetStream spool
  (backends/jetstream) under the stream prefix ``PL_<datacenter>``, with every stream at
  ``cluster.replicas`` (3 unless the file says otherwise; a cluster with fewer JetStream
  servers than that refuses to start, with a message saying so);
* **API keys**: PostgreSQL (backends/postgres), a key created on one node works on all;
* **the pipeline's consumers**: each node's worker reads the whole shared event log into
  its own stores under consumer names of its own (``<node id>-<consumer>``, node_log.py):
  two nodes never split one consumer's events between them.
  Retention (events/retention.py) prunes by age and this node's consumers only; a node
  whose consumers lag by more than ``events.retention`` misses what was pruned.

* **suppressions and unsubscribe groups**: PostgreSQL too (the JetStream spool's
  PostgresSuppressions store, cluster/suppressions.py): both doors drop listed
  recipients at accept, bounces list their address at settle, and the suppression and
  ASM APIs read and write the same tables from every node;
* **leases**: short (``cluster.lease``) and renewed while this node holds the work
  (cluster/leases.py), so a node that dies leaves its deliveries to the others within
  one lease.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from postline.backends.jetstream.connect import close as close_connection
from postline.backends.jetstream.connect import connect
from postline.backends.jetstream.cursors import Cursors
from postline.backends.jetstream.events import JetStreamEventLog
from postline.backends.jetstream.index import Entry
from postline.backends.jetstream.publish import Publisher
from postline.backends.jetstream.records import Names
from postline.backends.jetstream.setup import ensure_all
from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.backends.postgres.suppressions import PostgresSuppressions
from postline.cluster.leases import LeaseKeeper
from postline.cluster.membership import Membership
from postline.cluster.node_log import NodeEventLog
from postline.cluster.origins import register as register_origin
from postline.cluster.suppressions import SharedSuppressions, guarded
from postline.cluster.takeovers import Takeovers, take_over
from postline.config import ClusterConfig, Config
from postline.keys import KeyStore
from postline.spool.interface import (
    EXPIRE_LEASE,
    AcceptBatch,
    Counts,
    Lease,
    QueueInfo,
    Settle,
    SpoolUnavailable,
    StoredMessage,
)

log = logging.getLogger("postline.cluster")

NODE_ID_FILE = "cluster-node"  # in data_dir: this node's name in the shared state
TIMEOUT = 5.0  # seconds a JetStream request may take before it is retried
START_WAIT = 90.0  # seconds a starting node waits for its NATS (started at the same time?)


class ClusterStartError(OSError):
    """Cluster mode cannot start; the message names the setting or the service. An
    OSError so that ``postline serve`` says "cannot start: ..." and exits 1."""


def prefix(cluster: ClusterConfig) -> str:
    """The streams' name prefix: one set of streams per datacenter."""
    return f"PL_{cluster.datacenter}"


def node_id(data_dir: str | Path) -> str:
    """This data dir's node name in the cluster (made once, kept in ``cluster-node``)."""
    path = Path(data_dir) / NODE_ID_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(token + "\n", encoding="ascii")
    try:
        os.link(tmp, path)  # the first writer wins; a racing one reads its token
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text(encoding="ascii").strip()


def _cluster(cfg: Config) -> ClusterConfig:
    assert cfg.cluster is not None and cfg.cluster.enabled
    return cfg.cluster


def _spool_max_age(cfg: Config) -> float:
    """The streams' backstop age: the mail's max age and a day more."""
    return float(cfg.delivery.max_age) + 86400.0


def _refused(cluster: ClusterConfig, exc: BaseException) -> ClusterStartError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        text = (
            f"no answer in {START_WAIT:.0f} s (is nats-server running there, with JetStream"
            " enabled? the log's 'NATS connection error' lines say why it was refused)"
        )
    hint = ""
    if "insufficient resources" in text.lower() or "replicas" in text.lower():
        hint = (
            f"; cluster.replicas is {cluster.stream_replicas}: the NATS cluster needs that "
            "many JetStream servers (set replicas = 1 explicitly for a single server)"
        )
    return ClusterStartError(f"cannot open the JetStream spool on {cluster.nats}: {text}{hint}")


async def open_spool(cfg: Config) -> ClusterSpool:
    cluster = _cluster(cfg)
    try:
        spool = await asyncio.wait_for(
            open_jetstream_spool(
                cluster.nats,
                replicas=cluster.stream_replicas,
                prefix=prefix(cluster),
                max_age=_spool_max_age(cfg),
                timeout=TIMEOUT,
            ),
            START_WAIT,
        )
    except (Exception, TimeoutError) as exc:
        raise _refused(cluster, exc) from exc
    try:
        # NATS first, so a NATS cluster too small for the replicas is what a node with
        # both services wrong says; the spool closes the lists from here on (lists.py)
        spool._lists = await _open_lists(cluster)
        # before any accept: a datacenter sharing this database stores its own events
        # and the others skip them (cluster/origins.py)
        await register_origin(cluster.postgres, cluster.datacenter)
        members = await Membership.join(
            spool.log.js, f"{prefix(cluster)}_NODES", node_id(cfg.data_dir),
            cluster.stream_replicas, Path(cfg.data_dir),
        )  # fmt: skip
    except BaseException:
        await spool.close()
        raise
    log.info(
        "cluster spool open",
        extra={"nats": cluster.nats, "datacenter": cluster.datacenter,
               "replicas": cluster.stream_replicas, "lease": float(cluster.lease)},
    )  # fmt: skip
    from postline.cluster.linked import LinkedSpool  # other datacenters (multidc.py)

    opened = LinkedSpool(spool, members, node_id(cfg.data_dir), float(cluster.lease))
    opened.keeper.start()
    await opened.link(cluster, _spool_max_age(cfg))
    return opened


async def _open_lists(cluster: ClusterConfig) -> PostgresSuppressions:
    """The shared suppression lists (migrating the schema, as the key store does)."""
    try:
        return await PostgresSuppressions.open(cluster.postgres)
    except Exception as exc:  # PostgresUnavailable, SchemaTooNew
        raise ClusterStartError(f"cannot open the PostgreSQL suppression store: {exc}") from exc


async def open_keys(cfg: Config) -> KeyStore:
    """The API key store: PostgreSQL in cluster mode, else ``<data_dir>/keys.db``."""
    if not cfg.clustered:
        from postline.backends.sqlite.keys import SqliteKeyStore

        return SqliteKeyStore(cfg.data_dir)
    from postline.backends.postgres.keys import PostgresKeyStore

    dsn = _cluster(cfg).postgres
    try:
        return await asyncio.to_thread(PostgresKeyStore, dsn)
    except Exception as exc:
        raise ClusterStartError(f"cannot open the PostgreSQL key store: {exc}") from exc


def open_keys_sync(cfg: Config) -> KeyStore:
    """:func:`open_keys` for a caller without an event loop (``postline keys``)."""
    return asyncio.run(open_keys(cfg))


def close_keys(keys: KeyStore) -> None:
    close: Callable[[], None] | None = getattr(keys, "close", None)
    if close is not None:
        close()


async def open_event_log(cfg: Config) -> Any:
    """The event log the pipeline reads: ``spool.db``'s, or the JetStream one with this
    node's consumer names (its own NATS connection, closed by ``close``)."""
    if not cfg.clustered:
        from postline.backends.sqlite.eventlog import SqliteEventLog

        return SqliteEventLog(cfg.data_dir)
    cluster = _cluster(cfg)
    try:
        nc = await connect(cluster.nats)  # connect.py: random server order, fast reconnect
    except Exception as exc:
        raise _refused(cluster, exc) from exc
    try:
        js = nc.jetstream(timeout=TIMEOUT)
        names = Names(prefix(cluster))
        kv, _ = await ensure_all(js, names, cluster.stream_replicas, _spool_max_age(cfg))
        events = JetStreamEventLog(js, kv, names, Publisher(js, TIMEOUT), Cursors(nc, js, names))
    except BaseException:
        await nc.close()
        raise

    close = functools.partial(
        close_connection, nc, None if events.cursors is None else events.cursors.close
    )
    return NodeEventLog(events, node_id(cfg.data_dir), close)


async def open_worker_backends(cfg: Config) -> tuple[Any, KeyStore]:
    """What the pipeline worker reads: the event log and the key store (its API
    authenticates the requests the node forwards)."""
    events = await open_event_log(cfg)
    try:
        keys = await open_keys(cfg)
    except BaseException:
        await events.close()
        raise
    return events, keys


class ClusterSpool(SharedSuppressions):
    """The JetStream spool plus what the node asks of a spool beyond the Spool protocol
    (``suppressed`` and the suppressions API's calls, ``queue_summary``, ``problem``),
    queue ownership (membership.py) and lease renewal (leases.py)."""

    backend = "jetstream"

    def __init__(
        self, spool: JetStreamSpool, members: Membership, node: str, lease: float = 60.0
    ) -> None:
        self.spool = spool
        self.members = members
        self.node = node  # the data dir's node id (members.node is this run's name)
        self.log = NodeEventLog(spool.log, node)
        self.keeper = LeaseKeeper(spool, lease)  # the leases this node holds, renewed
        self.takeovers = Takeovers()  # when each queue's orphans may next be taken over

    # -- the accept path ---------------------------------------------------------------

    async def accept(self, batch: AcceptBatch) -> None:
        """Store the batch; with ``drop_suppressed`` (the relay) the spool drops listed
        recipients first, in place (spool/drops.py). Nothing acknowledged on failure:
        SpoolUnavailable (503 / 452); UnknownGroups passes (400 / 550)."""
        await guarded(self.spool.accept(batch))

    # -- the Spool protocol --------------------------------------------------------------

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        """Only the queue's owner leases it (membership.py says why). Leases are taken
        for ``cluster.lease`` and renewed while held, up to ``lease_for`` (leases.py)."""
        domain = domain.lower()
        if not self.members.owns(tenant, domain):
            return []
        keeper, until = self.keeper, now + lease_for
        short = keeper.lease_for(lease_for)
        taken = await self.spool.lease(tenant, domain, now, limit, short)
        # held before looking for orphans: just leased, they would look like ones (a job
        # with every recipient twice was sent when this came after)
        keeper.hold(taken, until)
        if self.takeovers.due((tenant, domain)):
            orphans = self._orphans(tenant, domain)[: max(limit - len(taken), 0)]
            if orphans:  # leased by a node that died: take them over, CAS as always
                taken += await take_over(self, (tenant, domain), orphans, now + short, until)
        return taken

    def _orphans(self, tenant: str, domain: str) -> list[Entry]:
        """Leased deliveries of the queue that no live node works on (membership.py).
        Not one whose lease this run wrote (held, or let go for a settle or release that
        did not land): taking it "over" again sent it twice."""
        if not self.members.orphaned(tenant, domain):
            return []
        holds, me = self.keeper.holds, self.spool._node
        return [
            e
            for e in self.spool.index.queue(tenant, domain)
            if e.state.leased and e.writer != me and not holds(e.state.delivery_id)
        ]

    def _orphans_due(self, tenant: str, domain: str, now: float) -> float | None:
        """When the queue's orphans may next be taken over (None: it has none)."""
        if not self._orphans(tenant, domain):
            return None
        return now + self.takeovers.wait((tenant, domain))

    async def settle(self, settles: Sequence[Settle]) -> None:
        """A bounce's suppression goes to PostgreSQL first (lists.py); either system away
        is SpoolUnavailable, on which the engine keeps the outcomes and retries them, so
        the leases stay this node's and renewed meanwhile (not sent again)."""
        held = await self.keeper.let_go(s.lease.delivery_id for s in settles)
        try:
            await guarded(self.spool.settle(settles))
        except SpoolUnavailable:
            self.keeper.hold_again(held)
            raise

    async def release(self, leases: Sequence[Lease], due_at: float) -> None:
        await self.keeper.let_go(lease.delivery_id for lease in leases)
        await self.spool.release(leases, due_at)

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        return await self.spool.load(message_ids)

    async def queues(self, now: float) -> list[QueueInfo]:
        """The queues this node owns (the engine arms these; the owners arm the rest)."""
        owns = self.members.owns
        out = []
        for q in await self.spool.queues(now):
            if owns(q.tenant, q.domain):
                if (due := self._orphans_due(q.tenant, q.domain, now)) is not None:
                    q = QueueInfo(q.tenant, q.domain, min(q.next_due, due), q.size)
                out.append(q)
        return out

    async def next_due(self, tenant: str, domain: str) -> float | None:
        """None for a queue another node owns: the engine forgets it (no polling)."""
        domain = domain.lower()
        if not self.members.owns(tenant, domain):
            return None
        due = await self.spool.next_due(tenant, domain)
        orphans = self._orphans_due(tenant, domain, time.time())
        if orphans is None or due is None:
            return due
        return min(due, orphans)

    async def expire(self, now: float, limit: int) -> list[Lease]:
        taken = await self.spool.expire(now, limit)
        self.keeper.hold(taken, now + EXPIRE_LEASE)
        return taken

    async def counts(self) -> Counts:
        return await self.spool.counts()

    # -- for the node ------------------------------------------------------------------

    async def queue_summary(self) -> tuple[int, float | None]:
        """(pending deliveries of the whole cluster, oldest creation time): /metrics."""
        states = [e.state for e in self.spool.index.by_id.values()]
        return len(states), min((s.created_at for s in states), default=None)

    def problem(self) -> str | None:
        nc = self.spool._nc  # private: no public accessor yet (report)
        if not nc.is_connected:
            return "not connected to NATS (reconnecting)"
        return None

    async def close(self) -> None:
        await self.keeper.stop()  # before leaving: the others wait out what is still held
        await self.members.leave()
        await self.spool.close()
