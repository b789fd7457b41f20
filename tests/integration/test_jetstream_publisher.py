"""The JetStream publisher (backends/jetstream/publish.py) against a real nats-server:
a batch comes back with each message's sequence in order; published again with the same
ids it is deduplicated (the same sequences, nothing stored twice); a batch nobody
acknowledges is retried until ``give_up_after`` and then refused, leaving no publish
pending (each timed-out future is cancelled, giving back its slot)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.js import JetStreamContext, api

from postline.backends.jetstream.publish import Conflict, Out, Publisher
from postline.spool.interface import SpoolUnavailable
from postline.testing.nats import NatsCluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


def with_js(server: NatsCluster, body: Callable[[JetStreamContext], Awaitable[None]]) -> None:
    """Run ``body`` with a JetStream context on ``server``, then close the connection."""

    async def main() -> None:
        nc = await nats.connect(server.urls)
        try:
            await body(nc.jetstream())
        finally:
            await nc.close()

    asyncio.run(main())


def test_a_batch_is_acknowledged_in_order_and_deduplicated(nats_server: NatsCluster) -> None:
    async def run(js: JetStreamContext) -> None:
        await js.add_stream(api.StreamConfig(name="PUB", subjects=["pub.>"]))
        pub = Publisher(js, timeout=2.0)
        outs = [Out(f"pub.{i % 3}", f"m{i}".encode(), f"id-{i}") for i in range(200)]
        seqs = await pub.put_all(outs)
        assert sorted(seqs) == list(range(1, 201))
        for out, seq in zip(outs, seqs, strict=True):  # each sequence is its own message
            assert (await js.get_msg("PUB", seq)).data == out.payload
        assert await pub.put_all(outs) == seqs  # the same ids: stored once
        assert (await js.stream_info("PUB")).state.messages == 200
        assert await pub.put(Out("pub.x", b"one", "id-one")) == 201
        assert await pub.put_all([]) == []

    with_js(nats_server, run)


def test_a_batch_nobody_acknowledges_is_refused_and_leaves_nothing_pending(
    nats_server: NatsCluster,
) -> None:
    async def run(js: JetStreamContext) -> None:
        pub = Publisher(js, timeout=0.2, give_up_after=1.0)
        outs = [Out("nostream.here", b"x", f"lost-{i}") for i in range(20)]
        with pytest.raises(SpoolUnavailable, match=r"did not acknowledge nostream\.here"):
            await asyncio.wait_for(pub.put_all(outs), 10)
        assert js.publish_async_pending() == 0

    with_js(nats_server, run)


def test_conditional_writes_in_one_batch_each_get_a_sequence_or_a_conflict(
    nats_server: NatsCluster,
) -> None:
    async def run(js: JetStreamContext) -> None:
        await js.add_stream(api.StreamConfig(name="CAS", subjects=["cas.>"]))
        pub = Publisher(js, timeout=2.0)
        first = await pub.cas_all([(Out(f"cas.{i}", b"v1", f"a-{i}"), 0) for i in range(50)])
        assert all(isinstance(r, int) for r in first) and len(set(first)) == 50
        # half written on the right last sequence, half on a stale one (0)
        writes = [(Out(f"cas.{i}", b"v2", f"b-{i}"), first[i] if i % 2 else 0)
                  for i in range(50)]  # fmt: skip
        second = await pub.cas_all(writes)
        for i, r in enumerate(second):
            assert isinstance(r, int) if i % 2 else isinstance(r, Conflict), (i, r)
        again = await pub.cas_all(writes[1:2])  # the same id again: deduplicated
        assert again == second[1:2]
        assert await pub.cas(Out("cas.x", b"one", "c-1"), 0) > 0
        with pytest.raises(Conflict):
            await pub.cas(Out("cas.x", b"two", "c-2"), 0)
        assert pub._replies is not None and not pub._replies._waiting

    with_js(nats_server, run)


def test_conditional_writes_nobody_answers_are_refused(nats_server: NatsCluster) -> None:
    async def run(js: JetStreamContext) -> None:
        pub = Publisher(js, timeout=0.2, give_up_after=1.0)
        outs = [(Out("nostream.cas", b"x", f"l-{i}"), 0) for i in range(10)]
        with pytest.raises(SpoolUnavailable, match=r"did not acknowledge nostream\.cas"):
            await asyncio.wait_for(pub.cas_all(outs), 10)
        assert pub._replies is not None and not pub._replies._waiting

    with_js(nats_server, run)
