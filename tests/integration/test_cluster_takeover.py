"""Taking over a departed node's leases (cluster/takeovers.py) on a real nats-server: a
takeover that conflicts because this node's index is behind reads the current state and
waits before the queue's next try (it once retried 26,446 times in 19 s, each logging
"took over ... 0"); and a delivery this node took over is never taken over by it again,
even once it is no longer renewing it (a settle or release that did not land).

Two JetStream spools on the same streams play the departed node and the survivor; the
survivor's membership says every queue is its own and orphaned (membership.py's
business, tested in test_cluster_membership.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import pytest

from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.cluster.backends import ClusterSpool
from postline.spool.conformance import batch, message
from postline.testing.nats import nats_cluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

HOUR = 3600.0


class Departed:
    """Membership of a node that owns every queue, whose earlier owner is gone."""

    def owns(self, tenant: str, domain: str) -> bool:
        return True

    def orphaned(self, tenant: str, domain: str) -> bool:
        return True

    async def leave(self) -> None:
        pass


async def _until(spool: JetStreamSpool, ids: list[int], seqs: dict[int, int]) -> None:
    deadline = time.monotonic() + 10
    while any((e := spool.index.get(d)) is None or e.seq < seqs[d] for d in ids):
        assert time.monotonic() < deadline, "the survivor's index never caught up"
        await asyncio.sleep(0.02)


def test_takeover_backs_off_on_a_stale_index_and_never_takes_a_delivery_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main(urls: list[str]) -> None:
        a = await open_jetstream_spool(urls, replicas=1, prefix="TO")  # dies holding leases
        b = await open_jetstream_spool(urls, replicas=1, prefix="TO")
        node = ClusterSpool(b, Departed(), "nb", 10.0)  # type: ignore[arg-type]
        try:
            now = time.time()
            await a.accept(batch(message(*(f"r{i}@d.example" for i in range(3)), due_at=now)))
            leased = await a.lease("t1", "d.example", now, 10, HOUR)
            ids = [x.delivery_id for x in leased]
            first = {d: e.seq for d in ids if (e := a.index.get(d)) is not None}
            await _until(b, ids, first)
            stale = {d: b.index.by_id[d] for d in ids}
            # a renews its leases just before it dies; b's index does not learn of it
            for d in ids:
                e = a.index.by_id[d]
                await a.writes.write(e, msgspec.structs.replace(e.state, due_at=now + HOUR + 1))
            renewed = {d: e.seq for d in ids if (e := a.index.get(d)) is not None}
            await _until(b, ids, renewed)
            b.index.by_id.update(stale)  # b's view behind the stream, as in the chaos run

            with caplog.at_level(logging.WARNING, logger="postline.cluster"):
                assert await node.lease("t1", "d.example", now, 10, HOUR) == []
                assert not [r for r in caplog.records if "took over" in r.message]
                assert {d: b.index.by_id[d].seq for d in ids} == renewed  # read again
                due = await node.next_due("t1", "d.example")
                assert due is not None and due > time.time(), "due again at once: a busy loop"
                tries = [await node.lease("t1", "d.example", time.time(), 10, HOUR)]
                assert tries == [[]]  # still waiting
                await asyncio.sleep(0.6)  # the first wait after a conflict (takeovers.py)
                taken = await node.lease("t1", "d.example", time.time(), 10, HOUR)
                assert sorted(x.delivery_id for x in taken) == sorted(ids)
                assert len([r for r in caplog.records if "took over" in r.message]) == 1

                # b no longer renews them (a release that did not land): still b's own
                await node.keeper.let_go(ids)
                assert await node.lease("t1", "d.example", time.time(), 10, HOUR) == []
                assert await node.next_due("t1", "d.example") == pytest.approx(
                    min(b.index.by_id[d].state.due_at for d in ids)
                )
        finally:
            await node.keeper.stop()
            await a.close()
            await b.close()

    with nats_cluster(1) as c:
        asyncio.run(main(c.urls))
