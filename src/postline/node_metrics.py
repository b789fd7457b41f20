"""What ``GET /metrics`` reports about a node, as Prometheus families with HELP and TYPE.

Counters (``_total``) count since the node started; gauges are read at scrape time. The
spool's queue depth and oldest pending delivery cost a count over the deliveries table
(tens of milliseconds at a million rows), so they are cached for ``SPOOL_TTL`` seconds.
``postline_ready`` is 1 exactly when ``/healthz`` answers 200.

:func:`node_families` gathers them from a running node (runtime.Node), with what its
parts report (the event pipeline, the relay worker, the cluster); :func:`live_families`
is the part read from memory, which the control socket shows flattened (:func:`flat`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postline.api.prometheus import Family, Labels
from postline.cluster import backends as cluster
from postline.smtp.supervisor import RelayWorker
from postline.spool.interface import SpoolUnavailable

if TYPE_CHECKING:
    from postline.deliver.metrics import Metrics as EngineMetrics
    from postline.runtime import Node
    from postline.schedule.destination import Destination

SPOOL_TTL = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")

# name (as the components report it) -> (family name, help); a counter unless in GAUGES
_NAMED: dict[str, tuple[str, str]] = {
    "http_connections": ("http_connections", "Open HTTP connections."),
    "http_connections_refused": (
        "http_connections_refused_total",
        "HTTP connections refused over the connection caps (503).",
    ),
    "http_requests_refused": (
        "http_requests_refused_total",
        "HTTP requests refused by the protocol limits (headers, size, Host, timeouts).",
    ),
    "http_timeouts": ("http_timeouts_total", "HTTP connections closed by a timeout."),
    "auth_failures": ("auth_failures_total", "Requests with a missing or invalid API key."),
    "auth_delayed": (
        "auth_delayed_total",
        "Failed authentications answered late because the address failed repeatedly.",
    ),
    "smtp_connections": ("smtp_connections", "Open SMTP relay connections."),
    "smtp_connections_accepted": (
        "smtp_connections_accepted_total",
        "SMTP relay connections accepted.",
    ),
    "smtp_connections_refused": (
        "smtp_connections_refused_total",
        "SMTP relay connections refused at connect (connection caps, banned address).",
    ),
    "smtp_messages": ("smtp_messages_total", "Messages the SMTP relay acknowledged (250)."),
    "smtp_messages_refused": (
        "smtp_messages_refused_total",
        "Messages the SMTP relay refused after DATA (size, headers, X-SMTPAPI, storage).",
    ),
    "smtp_timeouts": ("smtp_timeouts_total", "SMTP relay sessions closed by a timeout."),
    "smtp_tls_failures": ("smtp_tls_failures_total", "Failed TLS handshakes on the relay."),
    "smtp_errors": (
        "smtp_errors_total",
        "Unforeseen errors while taking a relayed message (answered 451).",
    ),
    "smtp_auth_failures": (
        "smtp_auth_failures_total",
        "Failed SMTP AUTH attempts (wrong user, unknown key, missing scope).",
    ),
    "smtp_worker_up": (
        "smtp_worker_up",
        "1 while the SMTP relay's worker process runs (it starts at the first connection).",
    ),
    "smtp_worker_restarts": (
        "smtp_worker_restarts_total",
        "Times the SMTP relay's worker was started again after it exited.",
    ),
}
GAUGES = frozenset({"http_connections", "smtp_connections", "smtp_worker_up"})


@dataclass
class SpoolGauges:
    """The cached (depth, oldest created_at) of the spool."""

    read: Callable[[], Awaitable[tuple[int, float | None]]]
    clock: Callable[[], float] = time.monotonic
    _at: float = field(default=-1e18)
    _value: tuple[int, float | None] = (0, None)

    async def get(self) -> tuple[int, float | None]:
        if self.clock() - self._at >= SPOOL_TTL:
            self._value = await self.read()
            self._at = self.clock()
        return self._value


def live_families(node: Node) -> list[Family]:
    """Families read from memory (no I/O): accept, engine and HTTP counters."""
    fams = accept_families(
        node.accepted_requests, node.accepted_recipients, node.dropped_recipients
    )
    if node.engine is not None:
        fams += engine_families(node.engine.metrics, node.engine.sites)
    if node.http is not None and node.app is not None:
        fams += component_families({**node.http.statistics(), **node.app.statistics()})
    if node.smtp is not None:  # the relay worker's: as last read (node_families reads)
        fams += component_families(node.smtp.statistics())
    return fams


async def node_families(node: Node) -> list[Family]:
    """Everything ``GET /metrics`` shows, with HELP and TYPE."""
    if isinstance(node.smtp, RelayWorker):
        await node.smtp.refresh()
    fams = live_families(node)
    if node.spool_gauges is not None:
        try:
            depth, oldest = await node.spool_gauges.get()
        except SpoolUnavailable:
            depth, oldest = 0, None
        fams += spool_families(depth, oldest, time.time())
    if node.pipeline is not None:
        with contextlib.suppress(SpoolUnavailable):
            fams += await node.pipeline.families()
    if node.adopted is not None:
        fams += node.adopted.families(time.time())
    if node.worker is not None:
        fams += await node.worker.families()
    if isinstance(node.spool, cluster.ClusterSpool):  # the whole cluster, as indexed here
        fams += _cluster_families(node, node.spool)
    return fams + process_families(node.problem() is None)


def _cluster_families(node: Node, spool: cluster.ClusterSpool) -> list[Family]:
    from postline.cluster import report

    fams = report.families(spool.members.live, spool.spool.index, time.time())
    if node.limits is not None:
        fams += report.share_families(node.limits.shares)
    link = getattr(spool, "peers", None)
    if link is not None:
        fams += report.link_families(link)
    return fams


def accept_families(requests: int, recipients: int, dropped: int) -> list[Family]:
    return [
        Family.one("accepted_requests_total", "counter", "Send requests answered 202.", requests),
        Family.one(
            "accepted_recipients_total", "counter", "Recipients accepted for delivery.", recipients
        ),
        Family.one(
            "dropped_recipients_total",
            "counter",
            "Recipients dropped at accept (on a suppression list).",
            dropped,
        ),
    ]


def engine_families(m: EngineMetrics, sites: Mapping[str, Destination]) -> list[Family]:
    outcomes = (
        ("delivered", m.delivered),
        ("deferred", m.deferred),
        ("bounced", m.bounced),
        ("expired", m.expired),
    )
    return [
        Family(
            "outcomes_total",
            "counter",
            "Delivery attempt outcomes by status (deferred counts each deferral).",
            tuple(((("status", s),), float(n)) for s, n in outcomes),
        ),
        Family.one("sessions_opened_total", "counter", "SMTP sessions opened.", m.sessions_opened),
        Family.one(
            "expiry_overruns_total",
            "counter",
            "Deliveries that reached a terminal state later than max age plus 5 minutes.",
            m.expiry_overruns,
        ),
        Family.one(
            "job_errors_total",
            "counter",
            "Delivery jobs that raised while rendering, signing or sending (then settled).",
            m.job_errors,
        ),
        Family.one(
            "settle_errors_total",
            "counter",
            "Outcomes the spool refused with an error (the delivery is retried later).",
            m.settle_errors,
        ),
        Family.one("sites", "gauge", "Destination sites the engine knows.", len(sites)),
        Family.one(
            "sessions",
            "gauge",
            "SMTP sessions open now.",
            sum(s.sessions for s in sites.values()),
        ),
        Family.one(
            "ready_deliveries",
            "gauge",
            "Deliveries waiting in the destination windows (in memory).",
            sum(s.ready.ready for s in sites.values()),
        ),
        Family.one(
            "inflight_deliveries",
            "gauge",
            "Deliveries being sent now.",
            sum(s.ready.inflight for s in sites.values()),
        ),
    ]


def component_families(values: Mapping[str, float]) -> list[Family]:
    out: list[Family] = []
    for key, value in sorted(values.items()):
        name, help_text = _NAMED.get(key, (f"{key}_total", key.replace("_", " ") + "."))
        out.append(Family.one(name, "gauge" if key in GAUGES else "counter", help_text, value))
    return out


def spool_families(depth: int, oldest: float | None, now: float) -> list[Family]:
    return [
        Family.one("queue_depth", "gauge", "Deliveries in the spool not yet settled.", depth),
        Family.one(
            "oldest_message_age_seconds",
            "gauge",
            "Age of the oldest delivery in the spool (0 when empty).",
            max(0.0, now - oldest) if oldest is not None else 0.0,
        ),
    ]


def process_families(ready: bool) -> list[Family]:
    return [
        Family.one("ready", "gauge", "1 when the node accepts mail (GET /healthz is 200).", ready),
        Family.one("process_resident_memory_bytes", "gauge", "Resident memory now.", _rss()),
        Family.one(
            "process_max_rss_bytes",
            "gauge",
            "Peak resident memory since start.",
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        ),
        Family.one("process_open_fds", "gauge", "Open file descriptors.", _open_fds()),
    ]


def short_name(family: str, labels: Labels) -> str:
    """A sample's short name: the family without ``_total``, or the value of its one label
    (``outcomes_total{status="delivered"}`` is ``delivered``)."""
    return labels[0][1] if len(labels) == 1 else family.removesuffix("_total")


def flat(families: Iterable[Family]) -> dict[str, float]:
    return {short_name(f.name, labels): v for f in families for labels, v in f.samples}


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
