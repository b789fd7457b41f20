"""LeaseKeeper (cluster/leases.py) on a real nats-server, on virtual time: what it renews,
what it lets go, and that the node's own settles and releases never lose to a renewal.

Two JetStream spools on the same streams play two nodes; the ClusterSpool's membership
is one that owns every queue (ownership is membership.py's business, tested elsewhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.cluster.backends import ClusterSpool
from postline.spool.conformance import T0, batch, message, outcome
from postline.spool.interface import Settlement
from postline.testing.nats import nats_cluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

HOUR = 3600.0  # what the engine asks (deliver/dispatch.py LEASE_FOR)
SHORT = 10.0  # cluster.lease here


class OwnsEverything:
    """Membership of a node that owns every queue and saw no node leave."""

    def owns(self, tenant: str, domain: str) -> bool:
        return True

    def orphaned(self, tenant: str, domain: str) -> bool:
        return False

    async def leave(self) -> None:
        pass


async def _until(done: Callable[[], bool], what: str) -> None:
    """Wait for a node's index to catch up with the stream (its ordered consumer)."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _due(spool: JetStreamSpool, delivery_id: int) -> float | None:
    e = spool.index.get(delivery_id)
    return e.state.due_at if e is not None and e.state.leased else None


async def _check(urls: list[str]) -> None:
    a = await open_jetstream_spool(urls, replicas=1, prefix="LK")
    b = await open_jetstream_spool(urls, replicas=1, prefix="LK")  # the other node
    node = ClusterSpool(a, OwnsEverything(), "n1", SHORT)  # type: ignore[arg-type]
    keeper = node.keeper
    try:
        rcpts = [f"r{i}@d.example" for i in range(4)]
        await node.accept(batch(message(*rcpts)))
        leases = await node.lease("t1", "d.example", T0, 10, HOUR)
        settled, released, taken, bounded = sorted(leases, key=lambda x: x.delivery_id)
        # taken for the short lease, not the hour the engine asked for
        assert await node.next_due("t1", "d.example") == T0 + SHORT
        assert await keeper.renew(T0 + 3) == 0  # most of the lease left
        assert await keeper.renew(T0 + 6) == 4
        assert {_due(a, x.delivery_id) for x in leases} == {T0 + 16}
        await _until(lambda: _due(b, bounded.delivery_id) == T0 + 16, "b sees the renewal")
        assert await b.lease("t1", "d.example", T0 + 12, 10, SHORT) == []  # past the first lease

        # a settle and a release of deliveries whose renewal is on its way both land
        renewal = asyncio.create_task(keeper.renew(T0 + 12))
        for _ in range(3):  # the renewal's writes are sent before the settle's
            await asyncio.sleep(0)
        await asyncio.gather(
            node.settle([outcome(settled, Settlement.DELIVERED, T0 + 12)]),
            node.release([released], T0 + 12),
            renewal,
        )
        assert a.index.get(settled.delivery_id) is None
        e = a.index.get(released.delivery_id)
        assert e is not None and not e.state.leased and e.state.due_at == T0 + 12
        assert _due(a, taken.delivery_id) == _due(a, bounded.delivery_id) == T0 + 22
        assert not keeper.holds(settled.delivery_id) and not keeper.holds(released.delivery_id)

        # a lease that ran out and another node took is let go, not renewed over
        await _until(lambda: _due(b, taken.delivery_id) == T0 + 22, "b sees the renewal")
        took = await b.lease("t1", "d.example", T0 + 23, 2, SHORT)  # earliest due first
        assert {x.delivery_id for x in took} == {released.delivery_id, taken.delivery_id}
        await _until(lambda: _due(a, taken.delivery_id) == T0 + 33, "a sees b's lease")
        assert await keeper.renew(T0 + 24) == 1  # the other one, still this node's
        assert not keeper.holds(taken.delivery_id) and _due(a, taken.delivery_id) == T0 + 33
        # renewed no longer than the engine asked: after that it runs out by itself
        assert await keeper.renew(T0 + HOUR) == 0 and not keeper.holds(bounded.delivery_id)
    finally:
        await node.close()
        await b.close()


def test_leases_are_renewed_while_held_and_let_go_when_settled_taken_or_too_old() -> None:
    with nats_cluster(1) as nc:
        asyncio.run(_check(nc.urls))
