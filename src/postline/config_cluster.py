"""The ``[cluster]`` section: NATS JetStream and PostgreSQL shared by every node.

Absent, or with ``nats`` and ``postgres`` both empty, a node runs the embedded
single-node default; the checks here make a half-written section stop the start.
"""

from __future__ import annotations

import re

from msgspec import field

from postline import config_checks as checks
from postline.config_types import Duration, Section
from postline.config_types import duration as _d


class ClusterConfig(Section):
    """Cluster mode (cluster/): the spool and event log on NATS JetStream, API keys in
    PostgreSQL, shared by every node running with the same section. Absent, or ``nats``
    and ``postgres`` both empty: the embedded single-node default."""

    nats: list[str] = field(default_factory=list)  # this datacenter's NATS server URLs
    postgres: str = ""  # DSN, e.g. "postgresql://postgres@127.0.0.1:5432/postline"
    datacenter: str = "dc1"  # the NATS cluster name of this datacenter
    # JetStream replicas of every stream. None (the key not written) means 3: fewer is
    # allowed only when the file says so, since an acknowledgement is durable through the
    # replicas' quorum (nats-server 2.9 fsyncs every 60 s), not through a disk write.
    replicas: int | None = None
    # How long a delivery stays leased to a node that stops renewing it (cluster/leases.py):
    # a node renews what it holds every lease/3; one that dies leaves its work to the
    # others within this long.
    lease: Duration = field(default_factory=lambda: _d("60s"))

    @property
    def enabled(self) -> bool:
        return bool(self.nats or self.postgres)

    @property
    def stream_replicas(self) -> int:
        return 3 if self.replicas is None else self.replicas

    def __post_init__(self) -> None:
        r = self.replicas
        nats_missing = "set it too: cluster mode needs NATS (e.g. ['nats://127.0.0.1:4222'])"
        pg_missing = "set it too: cluster mode needs PostgreSQL (e.g. 'postgresql://host/db')"
        checks.first(
            *(("nats", _nats_url_problem(u)) for u in self.nats),
            ("nats", nats_missing if self.postgres and not self.nats else None),
            ("postgres", pg_missing if self.nats and not self.postgres else None),
            ("postgres", _dsn_problem(self.postgres) if self.postgres else None),
            ("datacenter", None if _NAME.fullmatch(self.datacenter) else _BAD_DC),
            ("replicas", "must be 1 to 5" if r is not None and not 1 <= r <= 5 else None),
            ("lease", "must be at least 1s" if self.lease < 1.0 else None),
        )


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BAD_DC = "a name of letters, digits, '-' or '_' (e.g. 'dc1')"


def _nats_url_problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("nats", "tls") or not rest:
        return f"{url!r} is not a NATS URL (e.g. 'nats://127.0.0.1:4222')"
    hostport = rest.rpartition("@")[2].rstrip("/")
    return None if ":" not in hostport else checks.hostport_problem(hostport)


def _dsn_problem(dsn: str) -> str | None:
    if dsn.startswith(("postgresql://", "postgres://")):
        return None
    return f"{dsn!r} is not a PostgreSQL URL (e.g. 'postgresql://postgres@127.0.0.1/postline')"
