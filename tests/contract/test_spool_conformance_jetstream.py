"""The spool conformance suite against the JetStream backend (single nats-server, R1).

One nats-server for the module; each check gets its own stream prefix, so every check
starts from an empty spool. SUPPRESSION_CHECKS run on JetStream + PostgreSQL (cluster
mode's pair): each check gets a fresh database for the lists.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from postline.backends.jetstream.spool import open_jetstream_spool
from postline.backends.postgres.suppressions import PostgresSuppressions
from postline.spool import conformance
from postline.spool.interface import Settlement
from postline.testing.nats import NatsCluster, nats_cluster, server_binary
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

BACKENDS = ["jetstream"]
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsCluster]:
    with nats_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


def factory(backend: str, nats: NatsCluster, pg: str | None = None) -> Callable[[], Awaitable[Any]]:
    async def jetstream() -> Any:
        lists = None if pg is None else await PostgresSuppressions.open(pg)
        prefix = f"C{next(_prefixes)}"
        return await open_jetstream_spool(nats.urls, replicas=1, prefix=prefix, suppressions=lists)

    assert backend == "jetstream"
    return jetstream


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.name)
def test_spool(backend: str, check: Any, nats: NatsCluster) -> None:
    conformance.run(factory(backend, nats), check)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", conformance.SUPPRESSION_CHECKS, ids=conformance.name)
def test_suppressions(backend: str, check: Any, nats: NatsCluster, pg_dsn: str) -> None:
    conformance.run(factory(backend, nats, pg_dsn), check)


def test_without_a_store_suppressing_calls_refuse(nats: NatsCluster) -> None:
    async def check(spool: Any) -> None:
        b = conformance.batch(conformance.message("a@d.example"))
        b.drop_suppressed = True
        with pytest.raises(NotImplementedError):
            await spool.accept(b)
        with pytest.raises(NotImplementedError):
            await spool.suppressed("t1", ["a@d.example"])
        assert (await spool.counts()).messages == 0, "nothing stored"

    conformance.run(factory("jetstream", nats), check)


def test_a_bounce_settle_that_cannot_suppress_settles_nothing(
    nats: NatsCluster, pg_dsn: str
) -> None:
    """The suppression is written before the tombstone (backends/jetstream/lists.py): with
    PostgreSQL gone the settle raises and the delivery stays, to be attempted again; the
    other order would remove the delivery and lose the suppression."""

    async def check(spool: Any) -> None:
        await spool.accept(conformance.batch(conformance.message("gone@d.example")))
        (lease,) = await spool.lease("t1", "d.example", conformance.T0, 10, conformance.LEASE)
        settle = conformance.outcome(lease, Settlement.BOUNCED)
        settle.suppress = ("bounces", "550 5.1.1 no such user", "5.1.1")
        await spool._lists._pool.close()  # PostgreSQL unreachable from here on
        with pytest.raises(Exception, match="closed"):
            await spool.settle([settle])
        c = await spool.counts()
        assert (c.inflight, c.bounced, c.events) == (1, 0, 1), "delivery kept, no event"
        spool._lists = None  # closed already

    conformance.run(factory("jetstream", nats, pg_dsn), check)
