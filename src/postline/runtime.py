"""Wires the core to the backends and owns every long-running task of a node.

The backends: the embedded SQLite spool and key store in ``data_dir``, or with
``[cluster]`` the JetStream spool and the PostgreSQL key store (cluster/backends.py); the
data-dir lock is taken either way (one node per data dir). In cluster mode the node also
re-reads the shared queue index every CLUSTER_RESCAN seconds and arms what it finds, so
its engine takes part in work other nodes accepted (a lease is a compare-and-set: two
nodes never both take a delivery) and picks up what a dead node left.

Start order: data-dir lock → spool → keys → listeners (HTTP, SMTP) → delivery engine: a
second node on the same data dir stops before touching the spool, and a node that cannot
listen never delivers. Stop order: HTTP and SMTP (nothing new comes in), engine (in-flight
work goes back to the spool), spool, keys, lock (STYLE habit 13: every task has an owner).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from postline import node_metrics as nm
from postline.accept.expand import message_id_domain
from postline.api.app import App, get_only
from postline.api.auth import KeyCache
from postline.api.auth_failures import FailedAuth
from postline.api.health import healthz
from postline.api.http import HttpServer
from postline.api.mail_send import MailSend
from postline.api.metrics import metrics
from postline.api.prometheus import Family
from postline.api.suppressions import register as add_suppression_routes
from postline.api.types import Handler
from postline.backends.sqlite.keys import SqliteKeyStore
from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.cluster import backends as cluster
from postline.cluster.adopted import AdoptedLogs, adopted_watcher
from postline.cluster.shared_limits import SharedLimits
from postline.config import Config
from postline.control import ControlServer
from postline.datadir import DataDirLock
from postline.deliver import verp
from postline.deliver.dkim import signer_for
from postline.deliver.engine import Engine
from postline.deliver.mx import Router
from postline.deliver.outcome_log import OutcomeLog
from postline.events.pipeline import Pipeline
from postline.events.supervisor import PipelineWorker
from postline.keys import ApiKey, KeyStore
from postline.listen import listen_failed, listen_http, listening, split_hostport
from postline.model.events import DROPPED
from postline.smtp.build import relay_server
from postline.smtp.server import RelayServer
from postline.smtp.supervisor import RelayWorker
from postline.smtp.tls import server_context
from postline.spool.interface import AcceptBatch

log = logging.getLogger("postline.node")


# The event pipeline's API, answered by its worker process (events/worker.py).
PIPELINE_API = ("/v3/user/webhooks", "/v3/messages", "/v3/stats", "/v3/categories")
CLUSTER_RESCAN = 1.0  # seconds between looks at the cluster's queues (other nodes' work)


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.spool: SqliteSpool | cluster.ClusterSpool | None = None
        self.keys: KeyStore | None = None
        self.http: HttpServer | None = None
        self.app: App | None = None
        self.engine: Engine | None = None
        self.pipeline: Pipeline | None = None  # webhooks, activity, stats: off the mail path
        self.adopted: AdoptedLogs | None = None  # lost datacenters' consumers (in-node pipeline)
        self.worker: PipelineWorker | None = None  # ... or in a process of their own
        self._engine_stop = asyncio.Event()
        self.crashed = asyncio.Event()
        self._engine_task: asyncio.Task[None] | None = None
        self._rescan_task: asyncio.Task[None] | None = None  # cluster mode only
        self.limits: SharedLimits | None = None  # cluster mode: site limits for all nodes
        self.http_port = 0
        self.smtp: RelayServer | RelayWorker | None = None
        self.smtp_ports: list[int] = []  # bound ports of smtp.listen, then smtp.tls_listen
        self.accepted_requests = 0
        self.accepted_recipients = 0
        self.dropped_recipients = 0
        self.spool_gauges: nm.SpoolGauges | None = None
        self._stopping = False
        self._lock: DataDirLock | None = None
        self.control: ControlServer | None = None  # <data_dir>/control.sock (postline queue...)
        self._outcomes = OutcomeLog.for_config(cfg)  # the lines of recipients dropped at accept

    async def start(self) -> None:
        """Lock the data dir, open the spool, bind every listener, then start delivering.

        The lock comes first (a second node must not recover and deliver this node's
        spool) and the engine last (a node that cannot listen must not deliver). Any
        failure stops what was started and is raised: the node never half-runs.
        """
        cfg = self.cfg
        self._lock = DataDirLock.acquire(cfg.data_dir)  # DataDirBusy: exit at once
        try:
            if cfg.clustered:
                self.spool = await cluster.open_spool(cfg)
                self.keys = await cluster.open_keys(cfg)
            else:
                self.spool = await open_sqlite_spool(cfg.data_dir, cfg.spool)
                self.keys = SqliteKeyStore(cfg.data_dir)
            self.spool_gauges = nm.SpoolGauges(self.spool.queue_summary)
            app = self._build_app(self.spool, self.keys)
            await self._start_pipeline(app, self.spool)
            self.http = HttpServer(app, cfg.http, admit=app.admit)
            self.http_port = await listen_http(self.http, cfg.http.listen, "http.listen", 8025)
            if cfg.http.metrics_listen:  # /metrics there instead (_build_app left it out)
                apart = get_only({"/metrics": self._metrics(), "/healthz": self._healthz()})
                setting = "http.metrics_listen"
                await listen_http(self.http, cfg.http.metrics_listen, setting, 0, apart)
            await self._start_smtp(self.keys)
            if cfg.delivery.enabled:
                self._start_engine(self.spool, await self._bounce_key(self.spool))
            if self.limits is not None:
                await self.limits.open()
            self.control = await ControlServer.open(self)
            self._write_node_file()
        except BaseException:
            await self.stop()
            raise

    async def _start_pipeline(self, app: App, spool: SqliteSpool | cluster.ClusterSpool) -> None:
        """The event pipeline: in its worker process (the default), its API forwarded
        there; or in this process (``events.worker = false``)."""
        if not self.cfg.events.worker:
            events = spool.log if isinstance(spool, cluster.ClusterSpool) else spool
            self.pipeline = Pipeline(self.cfg, events)
            await self.pipeline.start(app)
            self.adopted = adopted_watcher(self.cfg, events)  # cluster/adopted.py
            if self.adopted is not None:
                self.adopted.start()
            return
        self.worker = worker = PipelineWorker(self.cfg)
        await worker.start()
        for prefix in PIPELINE_API:
            app.add_prefix(prefix, worker.forward)

    async def _start_smtp(self, keys: KeyStore) -> None:
        """The SMTP relay: in its worker process (the default: smtp/supervisor.py), the
        sockets bound here; or in this process (``smtp.worker = false``)."""
        cfg = self.cfg
        addrs = [(a, False) for a in cfg.smtp.listeners] + [(a, True) for a in cfg.smtp.tls_listen]
        if not addrs:
            return
        cache = KeyCache(keys)
        if cfg.smtp.worker:
            # The TLS pair is made (or checked) here, so a bad one fails the node's start.
            server_context(cfg.smtp.tls_cert, cfg.smtp.tls_key, cfg.data_dir,
                           cfg.smtp.hostname or cfg.delivery.helo_name)  # fmt: skip
            direct = self.spool.accept_soon if isinstance(self.spool, SqliteSpool) else None
            self.smtp = relay = RelayWorker(
                cfg, self._accept, cache, submit=direct, accepted=self._accepted
            )
        else:

            async def lookup(password: str) -> ApiKey | None:
                return cache.lookup(password)

            self.smtp = server = relay_server(cfg, self._accept, lookup)
        for addr, implicit in addrs:
            host, port = split_hostport(addr, 465 if implicit else 2525)
            setting = "smtp.tls_listen" if implicit else "smtp.listen"
            try:
                if cfg.smtp.worker:
                    bound = relay.bind(host, port, implicit_tls=implicit)
                else:
                    bound = await server.listen(host, port, implicit_tls=implicit)
            except OSError as exc:
                raise listen_failed(host, port, setting, exc) from None
            self.smtp_ports.append(bound)
            listening(setting, host, bound)
        if cfg.smtp.worker:
            relay.arm()

    def _write_node_file(self) -> None:
        """``<data_dir>/node.json``: pid and bound ports (port 0 in config picks a free one)."""
        info = {"pid": os.getpid(), "http_port": self.http_port, "smtp_ports": self.smtp_ports}
        path = Path(self.cfg.data_dir) / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(info))
        tmp.replace(path)

    async def _bounce_key(self, spool: SqliteSpool | cluster.ClusterSpool) -> bytes | None:
        """The VERP key (None: VERP off): a cluster's is every node's (shared_secret.py)."""
        cfg = self.cfg
        if not cfg.bounces.verp:
            return None
        if isinstance(spool, cluster.ClusterSpool):
            from postline.cluster.shared_secret import bounce_key

            return await bounce_key(cfg, migrate=False)  # the key store migrated at start
        return verp.load_key(cfg.bounces.secret, cfg.data_dir)

    def _start_engine(
        self, spool: SqliteSpool | cluster.ClusterSpool, bounce_key: bytes | None
    ) -> None:
        cfg = self.cfg
        router = Router(
            cfg.delivery.routes,
            cfg.dns.nameservers,
            float(cfg.dns.timeout),
            port=cfg.delivery.mx_port,
        )
        self.engine = Engine(spool, cfg, router, signer_for(cfg.delivery.dkim))
        if isinstance(spool, cluster.ClusterSpool):  # before the engine makes any site
            self.limits = SharedLimits.attach(spool, self.engine, cfg)
        if bounce_key is not None:
            self.engine.return_path = verp.ReturnPath(bounce_key, cfg.bounces.domain)
        self._engine_task = asyncio.get_running_loop().create_task(
            self.engine.run(self._engine_stop)
        )
        self._engine_task.add_done_callback(self._engine_done)
        if isinstance(spool, cluster.ClusterSpool):
            self._rescan_task = asyncio.get_running_loop().create_task(self._rescan(spool))

    async def _rescan(self, spool: cluster.ClusterSpool) -> None:
        """Arm every queue of the cluster at its next due time (cheap: the spool's
        in-memory index), so this node delivers work other nodes accepted or left."""
        while not self._engine_stop.is_set():
            await asyncio.sleep(CLUSTER_RESCAN)
            if self.engine is None:
                continue
            try:
                for q in await spool.queues(time.time()):
                    self.engine.rearm([(q.tenant, q.domain)], q.next_due)
            except Exception:  # the next pass tries again; the node's own work goes on
                log.exception("cluster queue rescan failed")

    def _engine_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A node that accepts but cannot deliver must not look healthy: stop it.
            log.error("delivery engine failed; stopping the node", exc_info=task.exception())
            self.crashed.set()

    async def _accept(self, batch: AcceptBatch) -> None:
        assert self.spool is not None
        await self.spool.accept(batch)
        self._accepted(batch)

    def _accepted(self, batch: AcceptBatch) -> None:
        """After a batch's commit: outcome lines, counters, the engine told of new work."""
        self._outcomes.dropped(batch)
        self.dropped_recipients += sum(1 for e in batch.events if e.event == DROPPED)
        self.accepted_requests += 1
        self.accepted_recipients += sum(len(m.recipients) for m in batch.messages)
        if self.engine is not None:
            self.engine.on_accept(batch)

    def _build_app(self, spool: SqliteSpool | cluster.ClusterSpool, keys: KeyStore) -> App:
        cfg = self.cfg
        failed = FailedAuth(cfg.http.auth_fail_limit, cfg.http.auth_fail_delay)
        self.app = app = App(KeyCache(keys), failed)
        app.add("GET", "/healthz", self._healthz())
        if not cfg.http.metrics_listen:
            app.add("GET", "/metrics", self._metrics())
        send = MailSend(
            accept=self._accept,
            suppressed=spool.suppressed,
            node=cfg.http.node_name,
            host=message_id_domain(cfg.delivery.message_id_domain, cfg.delivery.helo_name),
            max_age=float(cfg.delivery.max_age),
            max_body=cfg.http.max_body,
        )
        app.add("POST", "/v3/mail/send", send, scope="mail.send")
        add_suppression_routes(app, spool, time.time)  # cluster mode: PostgreSQL's lists
        return app

    def _healthz(self) -> Handler:
        return healthz(self.problem)

    def _metrics(self) -> Handler:
        return metrics(self.metric_families, self.cfg.http.metrics_key)

    def metrics(self) -> dict[str, float]:
        """The counters and engine gauges by short name (``delivered``, ``job_errors``...),
        as the control socket reports them: the same families /metrics shows, flattened."""
        return nm.flat(nm.live_families(self))

    async def metric_families(self) -> list[Family]:
        """Everything ``GET /metrics`` shows, with HELP and TYPE (node_metrics)."""
        return await nm.node_families(self)

    def problem(self) -> str | None:
        """Why the node cannot accept mail now, or None when it can."""
        if self._stopping:
            return "shutting down"
        return self.spool.problem() if self.spool is not None else "starting"

    async def stop(self) -> None:
        """Stop what was started, in reverse order; safe after a failed or partial start."""
        self._stopping = True
        if self.control is not None:
            await self.control.close()
        if self.http is not None:
            await self.http.stop()
        if self.smtp is not None:
            await self.smtp.stop()
        if self._rescan_task is not None:
            self._rescan_task.cancel()
            await asyncio.wait([self._rescan_task])
        if self._engine_task is not None:
            self._engine_stop.set()
            await asyncio.wait([self._engine_task])
        if self.limits is not None:
            await self.limits.close()
        if self.adopted is not None:
            await self.adopted.close()
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.worker is not None:
            await self.worker.stop()
        if self.spool is not None:
            await self.spool.close()
        if self.keys is not None:
            cluster.close_keys(self.keys)
        if self._lock is not None:
            self._lock.release()  # last: the spool is closed, another node may take over
            self._lock = None
        log.info("stopped")


START_TRIES = 3  # cluster mode: starts that time out talking to NATS or PostgreSQL
START_PAUSE = 1.0  # seconds between two of them


async def started(cfg: Config, make: Callable[[Config], Node] = Node) -> Node:
    """A started node. In cluster mode a start that timed out (a NATS request or a
    PostgreSQL call during a leader election or under overload: seen once when the test
    suite ran in four processes on two cores) is stopped as any failed start is and made
    again, up to START_TRIES times; other failures, and any in embedded mode, are raised."""
    for attempt in range(1, START_TRIES + 1):
        node = make(cfg)
        try:
            await node.start()
            return node
        except TimeoutError as exc:
            if not cfg.clustered or attempt == START_TRIES:
                raise
            log.warning(
                "the cluster start timed out; starting again",
                extra={"attempt": attempt, "error": str(exc) or type(exc).__name__},
            )
            await asyncio.sleep(START_PAUSE)
    raise AssertionError("unreachable")


async def serve(cfg: Config, stop: asyncio.Event) -> bool:
    """Run a node until ``stop`` is set; False if it stopped because a component failed."""
    node = await started(cfg)
    log.info("node started", extra={"data_dir": cfg.data_dir})
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(node.crashed.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        log.info("stopping")
        await node.stop()
    return not node.crashed.is_set()
