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
from postline.testing.nats import NatsCluster, nats_cluster, server_binary

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
        first = await pub.cas_all("CAS", [(Out(f"cas.{i}", b"v1", f"a-{i}"), 0) for i in range(50)])
        assert all(isinstance(r, int) for r in first) and len(set(first)) == 50
        # half written on the right last sequence, half on a stale one (0)
        writes = [(Out(f"cas.{i}", b"v2", f"b-{i}"), first[i] if i % 2 else 0)
                  for i in range(50)]  # fmt: skip
        second = await pub.cas_all("CAS", writes)
        for i, r in enumerate(second):
            assert isinstance(r, int) if i % 2 else isinstance(r, Conflict), (i, r)
        again = await pub.cas_all("CAS", writes[1:2])  # the same id again: deduplicated
        assert again == second[1:2]
        assert await pub.cas("CAS", Out("cas.x", b"one", "c-1"), 0) > 0
        with pytest.raises(Conflict):
            await pub.cas("CAS", Out("cas.x", b"two", "c-2"), 0)
        assert pub._replies is not None and not pub._replies._waiting

    with_js(nats_server, run)


def test_conditional_writes_nobody_answers_are_refused(nats_server: NatsCluster) -> None:
    async def run(js: JetStreamContext) -> None:
        pub = Publisher(js, timeout=0.2, give_up_after=1.0)
        outs = [(Out("nostream.cas", b"x", f"l-{i}"), 0) for i in range(10)]
        with pytest.raises(SpoolUnavailable, match=r"did not acknowledge nostream\.cas"):
            await asyncio.wait_for(pub.cas_all("NOSTREAM", outs), 10)
        assert pub._replies is not None and not pub._replies._waiting

    with_js(nats_server, run)


def test_a_conditional_write_retried_after_its_reply_was_lost_is_not_a_conflict() -> None:
    """On an R3 stream nats-server 2.9.10 refuses the retry of a conditional write that was
    stored (its PubAck lost) as "wrong last sequence", not as a duplicate of its id. The
    first try here is a plain publish whose reply nobody reads; the retry is ``cas_all``'s
    or ``cas``'s. Before: a Conflict (the lease it took went unused until it expired)."""

    async def main(urls: list[str]) -> None:
        nc = await nats.connect(urls)
        try:
            js = nc.jetstream(timeout=5.0)
            await js.add_stream(api.StreamConfig(
                name="RC", subjects=["rc.>"], num_replicas=3, max_msgs_per_subject=1
            ))  # fmt: skip
            pub = Publisher(js, timeout=5.0)
            await pub.prepare()
            first = await pub.cas_all(
                "RC", [(Out(f"rc.{i}", b"v1", f"a-{i}"), 0) for i in range(4)]
            )
            assert all(isinstance(r, int) for r in first)
            writes = [(Out(f"rc.{i}", b"v2", f"b-{i}"), int(first[i])) for i in range(4)]
            for out, last in writes[:3]:  # the tries whose replies were lost
                headers = {"Nats-Msg-Id": out.msg_id,
                           "Nats-Expected-Last-Subject-Sequence": str(last)}  # fmt: skip
                await nc.publish(out.subject, out.payload, headers=headers)
            await nc.flush()
            for _ in range(100):  # stored (by the quorum) before the retries
                last_seqs = [(await js.get_last_msg("RC", f"rc.{i}")).seq for i in range(3)]
                if all(seq != first[i] for i, seq in enumerate(last_seqs)):
                    break
                await asyncio.sleep(0.02)
            got = await pub.cas_all("RC", writes[:2] + writes[3:])
            assert got == [last_seqs[0], last_seqs[1], got[2]] and isinstance(got[2], int)
            assert await pub.cas("RC", *writes[2]) == last_seqs[2]
            # a real conflict stays one: another writer's message is last
            stale = (Out("rc.0", b"v3", "c-0"), int(first[0]))
            assert isinstance((await pub.cas_all("RC", [stale]))[0], Conflict)
            with pytest.raises(Conflict):
                await pub.cas("RC", *stale)
        finally:
            await nc.close()

    with nats_cluster(3) as c:
        asyncio.run(main(c.urls))
