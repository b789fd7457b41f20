"""Datacenters sharing one PostgreSQL database (cluster/origins.py): an event imported
from a datacenter registered in the database is skipped by the stores (that datacenter
stores it itself); one from a datacenter with a database of its own is stored. Real
PostgreSQL; the events' origin is what the JetStream reader sets from ``PL-Origin``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from postline.activity.pg_store import PgActivityStore
from postline.backends.jetstream.records import ORIGIN, encode, events_of
from postline.backends.postgres.migrate import migrate_dsn
from postline.cluster import origins
from postline.cluster.origins import UNKNOWN_TTL, Origins, register
from postline.model.events import EventRecord
from postline.stats.pg_store import PgStatsStore
from postline.testing.postgres import admin_dsn, fresh_database


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        asyncio.run(migrate_dsn(url))
        yield url


def ev(n: int, origin: str = "") -> tuple[int, EventRecord]:
    e = EventRecord(1_800_000_000.0 + n, "t", "processed", f"r{n}@x.example", f"m{n}",
                    b'{"sg_event_id":"e%d"}' % n, origin=origin)  # fmt: skip
    return n, e


def test_the_reader_puts_the_import_header_on_each_event() -> None:
    events = [ev(1)[1], ev(2)[1]]
    data = encode(events)
    assert [e.origin for e in events_of(data, None)] == ["", ""]
    assert [e.origin for e in events_of(data, {ORIGIN: "dc2"})] == ["dc2", "dc2"]
    # the origin is never stored in the event itself (omitted when empty)
    assert b"origin" not in data and events_of(data, {"PL-Count": "2"}) == events


def test_registration_is_once_and_waits_only_beside_others(dsn: str) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await register(dsn, "dc1") is True  # alone: no reader to wait for
        assert loop.time() - start < origins.JOIN_WAIT
        assert await register(dsn, "dc1") is False
        start = loop.time()
        assert await register(dsn, "dc2") is True  # beside dc1: dc1's readers' beliefs
        assert loop.time() - start >= origins.JOIN_WAIT
        assert await origins.registered(dsn) == {"dc1", "dc2"}

    asyncio.run(go())


def test_an_unknown_origin_is_read_again_after_the_ttl(dsn: str) -> None:
    async def go() -> None:
        now = [0.0]
        pool = await PgActivityStore.open(dsn)
        try:
            seen = Origins(pool.pool.fetch, lambda: now[0])
            await register(dsn, "dc1", wait=False)
            batch = [ev(1, "dc1"), ev(2, "dc3"), ev(3)]
            assert [o for o, _ in await seen.keep(batch)] == [2, 3]  # dc1 stores its own
            await register(dsn, "dc3", wait=False)  # dc3 moves in
            assert [o for o, _ in await seen.keep(batch)] == [2, 3]  # believed for a while
            now[0] += UNKNOWN_TTL
            assert [o for o, _ in await seen.keep(batch)] == [3]
            assert seen.skipped == 4
        finally:
            await pool.close()

    asyncio.run(go())


def test_stores_skip_events_their_own_datacenter_stores_in_the_same_database(
    dsn: str,
) -> None:
    """dc2's activity and stats consumers over a log holding its own events and ones
    imported from dc1 (sharing the database) and dc3 (a database of its own)."""

    async def go() -> None:
        await register(dsn, "dc1", wait=False)
        await register(dsn, "dc2", wait=False)
        activity = await PgActivityStore.open(dsn, "activity/dc2")
        stats = await PgStatsStore.open(dsn, "dc2")
        try:
            log = [ev(1), ev(2, "dc1"), ev(3, "dc3"), ev(4, "dc1"), ev(5)]
            assert await activity.ingest(log) == len(log)  # read past all (the offset)
            assert await activity.offset() == 5
            got = sorted(r[0] for r in await activity.query(
                "SELECT to_email FROM activity_events", []))  # fmt: skip
            assert got == ["r1@x.example", "r3@x.example", "r5@x.example"]
            rollup = await stats.add_events("stats", log)
            assert await stats.offset("stats") == 5
            assert (rollup.events, rollup.counted) == (3, 3)  # processed: requests
        finally:
            await activity.close()
            await stats.close()

    asyncio.run(go())
