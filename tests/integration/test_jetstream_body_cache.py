"""The JetStream spool's body cache (backends/jetstream/bodies.py): the messages of one
request share one body, fetched once however many load it at once; a body whose last
message is settled leaves the cache and is gone."""

from __future__ import annotations

import asyncio

import pytest

from postline.backends.jetstream.spool import open_jetstream_spool
from postline.spool.conformance import LEASE, T0, batch, message
from postline.spool.interface import Settle, Settlement
from postline.testing.nats import NatsCluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


def test_one_fetch_for_a_shared_body_and_gone_after_the_last_settle(
    nats_server: NatsCluster,
) -> None:
    async def main() -> None:
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="BC1")
        try:
            msgs = [message(f"r{i}@d.example") for i in range(50)]
            await spool.accept(batch(*msgs, body=b"the one body " * 100))
            leases = await spool.lease("t1", "d.example", T0, 100, LEASE)
            assert len(leases) == 50
            ids = sorted({lease.message_id for lease in leases})
            bodies = spool._bodies
            before = bodies.fetches
            loaded = await spool.load(ids)  # 50 loads at once (asyncio.gather inside)
            assert len(loaded) == 50 and {m.body for m in loaded} == {b"the one body " * 100}
            assert bodies.fetches - before == 1  # one request for all of them
            again = await spool.load(ids[:5])
            assert len(again) == 5 and bodies.fetches - before == 1  # from the cache
            await spool.settle([Settle(lease, Settlement.DELIVERED) for lease in leases])
            body_id = next(iter(bodies._cache), None)
            assert body_id is None, "a body no message needs any more left the cache"
            assert await spool.load(ids) == []  # settled: nothing left to load
        finally:
            await spool.close()

    asyncio.run(main())
