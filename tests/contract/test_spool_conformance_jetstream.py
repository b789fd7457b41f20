"""The spool conformance suite against the JetStream backend (single nats-server, R1).

One nats-server for the module; each check gets its own stream prefix, so every check
starts from an empty spool. SUPPRESSION_CHECKS are not run: the JetStream spool keeps no
suppression lists (PostgreSQL will, issue 15 item 4).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from postline.backends.jetstream.spool import open_jetstream_spool
from postline.spool import conformance
from postline.testing.nats import NatsCluster, nats_cluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

BACKENDS = ["jetstream"]
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsCluster]:
    with nats_cluster(1) as cluster:
        yield cluster


def factory(backend: str, nats: NatsCluster) -> Callable[[], Awaitable[Any]]:
    async def jetstream() -> Any:
        return await open_jetstream_spool(nats.urls, replicas=1, prefix=f"C{next(_prefixes)}")

    assert backend == "jetstream"
    return jetstream


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.name)
def test_spool(backend: str, check: Any, nats: NatsCluster) -> None:
    conformance.run(factory(backend, nats), check)
