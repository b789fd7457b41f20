"""The node's control channel: ``<data_dir>/control.sock``, for the operator's commands.

A Unix socket (mode 0600: whoever may read the spool may steer the node), one JSON request
line, one JSON reply line, then the connection closes::

    {"cmd": "info"}                          pid, listeners, metrics, rates, sites
    {"cmd": "flush", "domain": "x.org"}      deferred mail due now ("domain" optional)
    {"cmd": "purge", "domain": "x.org"}      or {"cmd": "purge", "message": "<id>"}

Flush and purge go through the node, not straight to the spool, because the node holds
state the spool does not: its queue index holds each queue's next due time (a flush must
re-arm it, or the retries wait for the old time) and its ready windows hold leased work
(a purge must take it back, or it would still be sent). The writes themselves are
``backends.sqlite.admin``'s, run on a thread with a connection of their own.

Paths longer than a sockaddr_un allows (108 bytes) are reached through
``/proc/self/fd/<dir fd>/control.sock``, which Linux resolves like any path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postline import __version__
from postline.backends.sqlite import admin, inspect
from postline.deliver.outcome_log import DROPPED, OutcomeLog
from postline.deliver.session import start_sessions
from postline.model.events import DROPPED_STATUS
from postline.schedule.destination import Destination
from postline.schedule.ready import Job

if TYPE_CHECKING:
    from postline.runtime import Node

log = logging.getLogger("postline.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
SAMPLE_EVERY = 10.0  # seconds between two samples of the outcome counters
RATE_WINDOWS = {"1m": 60.0, "5m": 300.0, "15m": 900.0}
_RATED = ("delivered", "deferred", "bounced", "expired")


def socket_path(data_dir: str | Path) -> Path:
    return Path(data_dir).resolve() / SOCKET_NAME


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in a sockaddr_un (see the module doc)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class Rates:
    """Outcomes per minute over the last 1, 5 and 15 minutes, from periodic samples."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        keep = int(max(RATE_WINDOWS.values()) / SAMPLE_EVERY) + 2
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=keep)

    def sample(self, counts: dict[str, float]) -> None:
        self._samples.append((self._clock(), {k: counts.get(k, 0.0) for k in _RATED}))

    def per_minute(self, counts: dict[str, float]) -> dict[str, dict[str, float]]:
        """Window name -> outcome -> per minute, and "seconds" it was measured over.

        A window longer than the node's life is left out, but for the shortest one: a node
        up for 20 s reports its rate over those 20 s (with "seconds": 20).
        """
        now = self._clock()
        out: dict[str, dict[str, float]] = {}
        for name, span in RATE_WINDOWS.items():
            # the oldest sample inside the window (the node may be younger than it)
            base = next(((t, c) for t, c in self._samples if now - t <= span + 1), None)
            if base is None:
                break
            seconds = now - base[0]
            if seconds < 1.0 or (out and seconds < span * 0.9):
                continue
            rates = {k: round((counts.get(k, 0.0) - base[1][k]) * 60 / seconds, 1) for k in _RATED}
            out[name] = {**rates, "seconds": round(seconds)}
        return out


class ControlServer:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._path = socket_path(node.cfg.data_dir)
        self._server: asyncio.AbstractServer | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._rates = Rates()
        self._outcomes = OutcomeLog.for_config(node.cfg)
        self._started = time.time()

    @classmethod
    async def open(cls, node: Node) -> ControlServer:
        """Start serving; a socket that cannot be made (a file system without Unix sockets)
        costs the operator's flush and purge, not the node: it runs on without them."""
        server = cls(node)
        try:
            await server.start()
        except OSError as exc:
            log.warning(
                "no control socket: `postline queue flush|purge` cannot reach this node",
                extra={"path": str(server._path), "error": str(exc)},
            )
        return server

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)  # a stale socket of a node that was killed
        with reachable(self._path) as name:
            self._server = await asyncio.start_unix_server(self._serve, name, limit=MAX_REQUEST)
        os.chmod(self._path, 0o600)
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._path.unlink(missing_ok=True)

    async def _sample(self) -> None:
        while True:
            self._rates.sample(self._node.metrics())
            await asyncio.sleep(SAMPLE_EVERY)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(await reader.readline())
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent garbage: nothing to answer
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "info":
                return {"ok": True, **self.info(), "lags": await self.lags()}
            if cmd == "flush":
                return {"ok": True, **await self.flush(req.get("domain"))}
            if cmd == "purge":
                return {"ok": True, **await self.purge(req.get("domain"), req.get("message"))}
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        except Exception as exc:  # one bad request must not take the node down
            log.exception("control command failed")
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    # -- commands ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        node = self._node
        host = node.cfg.http.listen.rpartition(":")[0] or "127.0.0.1"
        metrics = node.metrics()
        engine = node.engine
        sites = [_site_info(s) for s in engine.sites.values()] if engine else []
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self._started,
            "data_dir": str(Path(node.cfg.data_dir).resolve()),
            "listeners": _listeners(node, host),
            "delivery": engine is not None,
            "metrics": metrics,
            "rates_per_minute": self._rates.per_minute(metrics),
            "sites": sites,
            "pipeline": _pipeline_info(node),
            **_cluster_info(node),
        }

    async def lags(self) -> dict[str, dict[str, float]]:
        """Each event consumer's lag (events, seconds), from wherever the pipeline runs."""
        node = self._node
        fams = []
        with contextlib.suppress(Exception):  # a pipeline restarting has no lags to give
            if node.worker is not None:
                fams = await node.worker.families()
            elif node.pipeline is not None:
                fams = await node.pipeline.families()
        out: dict[str, dict[str, float]] = {}
        for fam in fams:
            unit = {"consumer_lag_events": "events", "consumer_lag_seconds": "seconds"}
            if fam.name in unit:
                for labels, value in fam.samples:
                    name = dict(labels).get("consumer", "?")
                    out.setdefault(name, {})[unit[fam.name]] = value
        return out

    async def flush(self, domain: str | None) -> dict[str, Any]:
        now = time.time()
        queues = await asyncio.to_thread(_in_db, self._node, admin.flush, now, domain)
        if self._node.engine is not None:
            self._node.engine.rearm(queues, now)
        return {"flushed": sum(queues.values()), "queues": len(queues)}

    async def purge(self, domain: str | None, message: str | None) -> dict[str, Any]:
        if (domain is None) == (message is None):
            return {"ok": False, "error": "purge needs a domain or a message"}
        match = _matcher(domain, message)
        purged: list[admin.Purged] = []
        for _ in range(3):  # again if the pump leased matching work while we purged
            taken = self._withdraw(match)
            ids = [lease.delivery_id for _, job in taken for lease in job.leases]
            try:
                purged += await asyncio.to_thread(
                    _in_db, self._node, _purge, time.time(), domain, message, ids
                )
            except BaseException:
                self._put_back(taken)
                raise
            self._freed({id(site): site for site, _ in taken}.values())
            if not taken:
                break
        self._log(purged)
        inflight = await asyncio.to_thread(_in_db, self._node, _inflight, domain, message)
        return {"purged": len(purged), "inflight": inflight}

    # -- helpers -----------------------------------------------------------------------
    def _withdraw(self, match: Callable[[Job], bool]) -> list[tuple[Destination, Job]]:
        """Take the matching jobs out of the ready windows (not those being sent)."""
        engine = self._node.engine
        taken: list[tuple[Destination, Job]] = []
        for site in engine.sites.values() if engine else ():
            for job in site.ready.drain():
                if match(job):
                    taken.append((site, job))
                else:
                    site.ready.push(job)
        return taken

    def _put_back(self, taken: list[tuple[Destination, Job]]) -> None:
        engine = self._node.engine
        for site, job in taken:
            site.ready.push(job)
        for site in {id(s): s for s, _ in taken}.values():
            if engine is not None:
                start_sessions(engine, site)

    def _freed(self, sites: Any) -> None:
        engine = self._node.engine
        for site in sites:
            if engine is not None:
                engine.room_freed(site)

    def _log(self, purged: list[admin.Purged]) -> None:
        if not self._outcomes.enabled():
            return
        for p in purged:
            self._outcomes.line(
                tenant=p.tenant,
                sg_message_id=p.sg_message_id,
                recipient=p.rcpt,
                relay="none",
                created_at=p.created_at,
                attempt=p.attempts,
                status=DROPPED,
                reply=admin.PURGE_REASON,
                dsn=DROPPED_STATUS,
            )


def _site_info(site: Destination) -> dict[str, Any]:
    return {
        "site": site.key,
        "state": site.health.state.value,
        "sessions": site.sessions,
        "ready": site.ready.ready,
        "inflight": site.ready.inflight,
        "concurrency": site.session_limit(),
    }


def _matcher(domain: str | None, message: str | None) -> Callable[[Job], bool]:
    if domain is not None:
        wanted = domain.lower()
        return lambda job: job.domain == wanted
    assert message is not None
    prefix = f"{message}."
    return lambda job: (
        job.meta.sg_message_id == message or job.meta.sg_message_id.startswith(prefix)
    )


def _purge(
    conn: Any, now: float, domain: str | None, message: str | None, ids: list[int]
) -> list[admin.Purged]:
    return admin.purge(conn, now, domain=domain, message=message, withdrawn=ids)


def _inflight(conn: Any, domain: str | None, message: str | None) -> int:
    return inspect.count_inflight(conn, domain, message)


def _in_db(node: Node, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(conn, *args)`` on a connection of its own (called on a worker thread)."""
    conn = admin.open_readwrite(node.cfg.data_dir)
    try:
        return fn(conn, *args)
    finally:
        conn.close()


# -- the client side -----------------------------------------------------------------------


class NoNode(Exception):
    """Nothing answers on the control socket (no node runs on this data directory)."""


def request(data_dir: str | Path, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command to the node; raises :class:`NoNode` when none listens."""
    path = socket_path(data_dir)
    if not path.exists():
        raise NoNode(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with reachable(path) as name:
                sock.connect(name)
        except OSError as exc:  # refused, gone, not a socket: nobody to talk to
            raise NoNode(str(path)) from exc
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data) if data else {"ok": False, "error": "no reply"}
    return reply


def _cluster_info(node: Node) -> dict[str, Any]:
    """Cluster mode: the live nodes and the deepest queues of the whole cluster."""
    from postline.cluster import report  # (nats-py: not imported in embedded mode)
    from postline.cluster.backends import ClusterSpool

    spool = node.spool
    if not isinstance(spool, ClusterSpool):
        return {}
    members = spool.members
    return {"cluster": report.info(members.node, members.live, spool.spool.index, time.time())}


def _pipeline_info(node: Node) -> dict[str, Any]:
    """Where the event pipeline runs: its worker process (pid, up, restarts) or the node."""
    worker = node.worker
    if worker is None:
        return {"where": "node" if node.pipeline is not None else "off"}
    proc = worker.proc
    return {
        "where": "worker",
        "pid": proc.pid if proc is not None else None,
        "up": worker.up,
        "restarts": worker.restarts,
    }


def _listeners(node: Node, host: str) -> dict[str, str]:
    """What the node listens on, by kind (smtp ports in config order: listen, tls_listen)."""
    out = {"http": f"{host}:{node.http_port}"}
    smtp = node.cfg.smtp
    addrs = [("smtp", a) for a in smtp.listeners] + [("smtps", a) for a in smtp.tls_listen]
    for i, ((kind, addr), port) in enumerate(zip(addrs, node.smtp_ports, strict=False)):
        key = kind if kind not in out else f"{kind}{i}"
        out[key] = f"{addr.rpartition(':')[0] or '127.0.0.1'}:{port}"
    return out
