"""The event pipeline's readers read JetStream through durable consumers of their own
(backends/jetstream/cursors.py): the same events as a direct read in every split, a
consumer per reader on the server with its lag, kept across a restart at the committed
offset, positioned again when the offset says so (a read not committed is read again)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from postline.backends.jetstream.cursors import durable_name
from postline.backends.jetstream.records import EVENTS_MAX_COUNT, offset
from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.config import WebhooksConfig
from postline.events.consumer import RunnerSet
from postline.model.events import EventRecord
from postline.testing.nats import NatsCluster, server_binary
from postline.testing.postgres import admin_dsn, fresh_database
from postline.webhooks.dispatcher import Deps, WebhookConsumer
from postline.webhooks.metrics import WebhookMetrics
from postline.webhooks.pg_store import PgWebhookStore
from postline.webhooks.poster import Poster
from postline.webhooks.settings import Webhook
from postline.webhooks.store import WebhookStore

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


def _event(i: int) -> EventRecord:
    return EventRecord(float(i), "t1", "delivered", f"r{i}@d.example", f"m{i}", b"{}")


async def _fill(spool: JetStreamSpool, sizes: list[int]) -> None:
    n = 0
    for size in sizes:  # one append each: messages of `size` events
        await spool.log.append([_event(n + i) for i in range(size)])
        n += size


def test_reads_through_a_consumer_give_what_a_direct_read_gives(nats_server: NatsCluster) -> None:
    async def main() -> None:
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU1")
        try:
            await _fill(spool, [1, 5, 3, 70, 2, 1, 130, 4])  # 216 events in 8 messages
            everything = await spool.read(0, 10_000)
            assert len(everything) == 216
            for limit in (1, 2, 3, 7, 64, 500):
                got: list[tuple[int, EventRecord]] = []
                after = 0
                while batch := await spool.read_as(f"split-{limit}", after, limit):
                    assert len(batch) <= limit
                    got += batch
                    after = batch[-1][0]
                    assert spool.log.cursors is not None
                    held = spool.log.cursors._cursors[f"split-{limit}"].buffer
                    if limit <= 3:  # fewer than a message holds: one message a pull, so
                        assert len(held) < 130  # at most one message's rest waits
                assert got == everything, f"limit {limit}"
            assert spool.log.cursors is not None
            pulls = spool.log.cursors.stats.pulls
            await spool.read_as("split-500", everything[-1][0], 500)  # caught up: one pull
            assert spool.log.cursors.stats.pulls == pulls + 1
        finally:
            await spool.close()

    asyncio.run(main())


def test_a_reader_has_a_durable_consumer_kept_at_its_committed_offset(
    nats_server: NatsCluster,
) -> None:
    async def main() -> None:
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU2")
        events = spool.log.names.events
        try:
            await _fill(spool, [10, 10, 10])
            first = await spool.read_as("activity", 0, 15)  # 1.5 messages
            info = await spool.log.js.consumer_info(events, durable_name("activity"))
            assert info.config.durable_name == durable_name("activity")
            # pulled as far as 15 events go: two messages read, the third pending
            assert info.delivered.stream_seq == 2 and info.num_pending == 1
            await spool.commit("activity", first[-1][0])
        finally:
            await spool.close()

        # a new process at the committed offset (mid-message): the consumer is made again
        # at that message, and the rest of it is read, not skipped
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU2")
        try:
            after = await spool.committed("activity")
            rest = await spool.read_as("activity", after, 100)
            assert [e.email for _, e in rest] == [f"r{i}@d.example" for i in range(15, 30)]
            assert spool.log.cursors is not None
            assert spool.log.cursors.stats.recreated == 1
            await spool.commit("activity", rest[-1][0])
        finally:
            await spool.close()

        # at a whole message's end the consumer already stands there: kept, not made again
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU2")
        try:
            before = await spool.log.js.consumer_info(events, durable_name("activity"))
            await _fill(spool, [2])
            more = await spool.read_as("activity", await spool.committed("activity"), 100)
            assert [e.email for _, e in more] == ["r0@d.example", "r1@d.example"]
            assert spool.log.cursors is not None
            assert spool.log.cursors.stats.positioned == 1
            assert spool.log.cursors.stats.recreated == 0
            after_info = await spool.log.js.consumer_info(events, durable_name("activity"))
            assert after_info.created == before.created
            assert after_info.num_pending == 0

            # read but never committed (the process died): reading again from the
            # committed offset gives the same events again
            again = await spool.read_as("activity", await spool.committed("activity"), 100)
            assert again == more
        finally:
            await spool.close()

    asyncio.run(main())


def test_the_pipelines_runner_reads_through_its_consumer(nats_server: NatsCluster) -> None:
    class Collect:
        name = "collector"

        def __init__(self) -> None:
            self.got: list[str] = []

        async def resume(self) -> int | None:
            return None

        async def handle(self, events: list[tuple[int, EventRecord]]) -> None:
            self.got += [e.email for _, e in events]

    async def main() -> None:
        spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU3")
        runners = RunnerSet(spool)
        try:
            await _fill(spool, [3, 4])
            consumer = Collect()
            runners.add(consumer, batch=2, poll=0.05)  # type: ignore[arg-type]
            for _ in range(100):
                if len(consumer.got) == 7:
                    break
                await asyncio.sleep(0.05)
            assert consumer.got == [f"r{i}@d.example" for i in range(7)]
            info = await spool.log.js.consumer_info(
                spool.log.names.events, durable_name("collector")
            )
            assert info.num_pending == 0 and info.delivered.stream_seq > 0
        finally:
            await runners.close()
            await spool.close()

    asyncio.run(main())


def test_a_webhook_made_elsewhere_starts_at_its_creation_time_in_this_log(
    nats_server: NatsCluster,
) -> None:
    with fresh_database(admin_dsn(os.environ)) as dsn:
        asyncio.run(_made_elsewhere(nats_server, dsn))


async def _made_elsewhere(nats_server: NatsCluster, dsn: str) -> None:
    """Datacenters sharing one database share their webhooks: a webhook made through
    dc1's API has dc1's log head as ``start_offset``, which means nothing in dc2's log.
    dc2's dispatcher, with nothing posted from its log yet, starts at the creation time
    instead (JetStreamEventLog.offset_at): the events stored after it, none before."""
    spool = await open_jetstream_spool(nats_server.urls, replicas=1, prefix="CU4")
    try:
        await _fill(spool, [3, 4])
        before = await spool.read(0, 100)
        await asyncio.sleep(0.05)
        created = time.time()
        await asyncio.sleep(0.05)
        await _fill(spool, [2])
        assert await spool.log.offset_at(0.0) == 0  # everything is after the epoch
        assert await spool.log.offset_at(created) == offset(2, EVENTS_MAX_COUNT)
        assert await spool.log.offset_at(time.time() + 1) == offset(3, EVENTS_MAX_COUNT)
        # no consumer is left behind by asking
        names = [c.name async for c in _consumers(spool)]
        assert names == [], names

        hook = Webhook("h1", "t1", "http://r.example/", True, frozenset({"delivered"}),
                       start_offset=offset(900, 5), created=created)  # fmt: skip
        async with _pg_store(dsn) as store:
            await store.db.insert(hook)
            deps = Deps(WebhooksConfig(), cast(WebhookStore, store), cast(Poster, None),
                        spool.log, WebhookMetrics())  # fmt: skip
            start = await WebhookConsumer(hook, deps).resume()
        after = await spool.read(start or 0, 100)
        assert [e.email for _, e in after] == ["r0@d.example", "r1@d.example"]
        assert len(before) == 7
    finally:
        await spool.close()


async def _consumers(spool: JetStreamSpool) -> AsyncIterator[Any]:
    for info in await spool.log.js.consumers_info(spool.log.names.events):
        yield info


@asynccontextmanager
async def _pg_store(dsn: str) -> AsyncIterator[PgWebhookStore]:
    store = await PgWebhookStore.open(dsn, "dc2", "node")
    try:
        yield store
    finally:
        await store.close()
