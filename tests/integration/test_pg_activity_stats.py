"""The activity and stats stores on PostgreSQL (cluster mode), against a fresh database:
the same answers as the embedded DuckDB / SQLite stores for the same events (queries in
the query language, message details, rollups), day partitions made ahead and dropped by
retention, two "nodes" ingesting the same log at once storing each event once, and a
session killed between ingest and COMMIT leaving nothing half-stored."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from postline.activity import pg_schema, schema, shapes
from postline.activity.pg_replay import PgReplaySource
from postline.activity.pg_store import PgActivityStore, partition_name
from postline.activity.query_sql import compile_pg, compile_query
from postline.activity.rows import batch_table
from postline.activity.store import ActivityStore, QueryTimeout
from postline.events.consumer import Batch
from postline.model.events import EventRecord, make_event
from postline.stats.pg_store import PgStatsStore
from postline.stats.store import StatsStore
from postline.testing.postgres import admin_dsn, fresh_database

DAY = 86400
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
D0 = int(T0 // DAY)
META = msgspec.json.encode({"from_email": "a@x.com", "subject": "Hi", "template_id": "d-1",
                            "asm_group_id": 7})  # fmt: skip
KILL = "SELECT pg_terminate_backend(pg_backend_pid())"


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


def ev(kind: str, msg: str, to: str, ts: float, tenant: str = "t", **extra: Any) -> EventRecord:
    cats = extra.pop("categories", ["c1"])
    e = make_event(
        kind, tenant=tenant, email=to, ts=ts, sg_message_id=msg, smtp_id="<x@y>",
        categories=cats, custom_args=extra.pop("custom_args", {"plan": "gold"}), extra=extra,
    )  # fmt: skip
    meta = META if kind in ("processed", "dropped") else b""
    return EventRecord(e.ts, e.tenant, e.event, e.email, e.sg_message_id, e.data, meta)


def log_events() -> Batch:
    """Three days of mail: processed / delivered / open / bounce / dropped, two tenants."""
    out: list[EventRecord] = []
    for i in range(30):
        ts = T0 - (i % 3) * DAY + i
        msg, to = f"m{i}", f"User{i % 7}@Example.com"
        cats = [["c1"], ["c1", "c2"], "solo"][i % 3]
        out.append(ev("processed", msg, to, ts, categories=cats, custom_args={"n": str(i % 4)}))
        if i % 5 == 4:
            out.append(ev("bounce", msg, to, ts + 1, reason="550", type="bounce", categories=cats))
        elif i % 7 == 6:
            out.append(ev("dropped", msg, to, ts + 1, reason="Unsubscribed", categories=cats))
        else:
            out.append(ev("delivered", msg, to, ts + 1, categories=cats))
            if i % 2:
                out += [ev("open", msg, to, ts + 2, categories=cats)] * 2
    out.append(ev("processed", "other", "user1@example.com", T0, tenant="u"))
    return [(n, r) for n, r in enumerate(out, 1)]


async def in_order(ingest: Callable[[Batch], Awaitable[object]], events: Batch, n: int) -> None:
    """A node's runner: the log in batches of ``n``, one after the other."""
    for i in range(0, len(events), n):
        await ingest(events[i : i + n])


QUERIES = [
    "",
    'to_email="user3@example.com"',
    'to_email="USER1@example.com" AND status="delivered"',
    'msg_id="m4"',
    'status="not_delivered"',
    'status="processed" OR opens_count > 1',
    'Contains(categories, "c2")',
    'Contains(events, "bounced") OR Contains(events, "dropped")',
    'unique_args[\'n\'] = "2" AND NOT subject LIKE "%x%"',
    'Contains(unique_args, "n") AND asm_group_id = 7 AND template_id IN ("d-1", "d-2")',
    'last_event_time BETWEEN TIMESTAMP "2027-01-14T00:00:00Z" AND TIMESTAMP '
    '"2027-01-15T08:00:05Z" AND to_email LIKE "user_@%"',
    "clicks_count = 99999999999",
]


async def duck_answers(tmp: Path, events: Batch) -> tuple[list[Any], Any]:
    store = await ActivityStore.open(tmp)
    try:
        await store.ingest(batch_table(events), events[-1][0])
        answers = []
        for text in QUERIES:
            c = compile_query(text)
            col, val = c.prefilter or (None, None)
            params = ["t", *([val] if col else []), *c.params, 100]
            rows = await store.query(schema.search_sql(c.where, col), params)
            answers.append([shapes.summary(r) for r in rows])
        rows = await store.query(schema.SELECT_MESSAGE, ["m3", "t"])
        return answers, shapes.message("m3", rows)
    finally:
        await store.close()


async def pg_answers(store: PgActivityStore) -> tuple[list[Any], Any]:
    answers = []
    for text in QUERIES:
        c = compile_pg(text)
        col, val = c.prefilter or (None, None)
        params = ["t", *([val] if col else []), *c.params, 100]
        rows = await store.query(pg_schema.search_sql(c.where, col), params)
        answers.append([shapes.summary(r) for r in rows])
    rows = await store.query(pg_schema.SELECT_MESSAGE, ["m3", "t"])
    return answers, shapes.message("m3", rows)


def test_pg_activity_store_answers_as_duckdb_once_per_event_with_day_partitions(
    dsn: str, tmp_path: Path
) -> None:
    events = log_events()

    async def main() -> None:
        # two nodes starting at once: one migrates, one makes the partitions, both open
        a, b = await asyncio.gather(
            PgActivityStore.open(dsn, clock=lambda: T0), PgActivityStore.open(dsn, clock=lambda: T0)
        )
        try:
            # partitions ahead: today and the next two days exist before any event
            assert await a.partitions() == [D0, D0 + 1, D0 + 2]
            # a session killed between COPY and COMMIT (a crash): nothing, not the offset
            a.before_commit = lambda conn: conn.execute(KILL)
            with pytest.raises(Exception):  # noqa: B017 (the connection is gone)
                await a.ingest(events[:10])
            a.before_commit = None
            assert (await a.offset(), await a.rows()) == (0, 0)
            # both nodes read the whole log at once, in overlapping batches: each event once
            # (each node's runner reads its batches in order, the two nodes at once)
            await asyncio.gather(in_order(a.ingest, events, 13), in_order(b.ingest, events, 7))
            assert await a.rows() == len(events)
            assert a.duplicates + b.duplicates == len(events)
            assert await b.offset() == events[-1][0]
            assert await a.ingest(events) == 0  # replayed by the log: skipped
            # partitions made on demand for the two earlier days
            assert await a.partitions() == list(range(D0 - 2, D0 + 3))
            # the same answers as DuckDB's store, through the query language
            assert await pg_answers(b) == await duck_answers(tmp_path, events)
            found, _ = await pg_answers(b)
            assert sorted(m["msg_id"] for m in found[1]) == ["m10", "m17", "m24", "m3"]
            assert len(found[-1]) == 0 and len(found[0]) == 30
            # replay reads the shared table in (ts, offset) pages
            source = PgReplaySource(a, page=7)
            pages = [
                p async for p in source.window("t", T0 - DAY, T0 + DAY, frozenset(["open"]), None)
            ]
            want = [(r.ts, r.sg_message_id, r.data) for _, r in sorted(
                ((o, r) for o, r in events if r.event == "open" and T0 - DAY <= r.ts < T0 + DAY),
                key=lambda e: (e[1].ts, e[0]))]  # fmt: skip
            assert [len(p) for p in pages] == [7, len(want) - 7]
            assert [(r.ts, r.sg_message_id, r.data) for p in pages for r in p] == want
            c2 = [p async for p in source.window("t", 0, 2 * T0, None, frozenset(["c2"]))]
            assert sorted(r.data for p in c2 for r in p) == sorted(
                r.data for _, r in events if b'"c2"' in r.data
            )
            # retention: days wholly older than the cutoff are dropped, whole partitions
            assert await a.prune(T0 - DAY) == sum(
                1 for _, r in events if int(r.ts // DAY) == D0 - 2
            )
            assert partition_name(D0 - 2) not in str(await a.pool.fetch(pg_schema.PARTITIONS))
            assert await a.partitions() == list(range(D0 - 1, D0 + 3))
            # an event of a day whose partition another node dropped: made again on retry
            late = [(events[-1][0] + 1, ev("open", "m1", "user1@example.com", T0 - 2 * DAY))]
            with pytest.raises(asyncpg.exceptions.CheckViolationError):
                await b.ingest(late)
            assert await b.ingest(late) == 1
            # a search past its time is cancelled in PostgreSQL; the store goes on
            with pytest.raises(QueryTimeout):
                await a.query("SELECT pg_sleep(5)", [], 0.2)
            assert await a.offset() == late[0][0]
            # a database fed by a second datacenter's log is noticed (the component warns)
            assert await a.other_logs() == []
            dc2 = await PgActivityStore.open(dsn, "activity/dc2", lambda: T0)
            await dc2.close()
            assert await a.other_logs() == ["dc2"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_pg_stats_rollups_match_sqlite_counted_once_across_nodes(dsn: str, tmp_path: Path) -> None:
    events = log_events()

    async def main() -> None:
        lite = await StatsStore.open(tmp_path)
        a, b = await PgStatsStore.open(dsn), await PgStatsStore.open(dsn)
        try:
            await lite.add_events("stats", events)
            assert await a.offset("stats") == 0
            b.before_commit = lambda conn: conn.execute(KILL)
            with pytest.raises(Exception):  # noqa: B017 (the connection is gone)
                await b.add_events("stats", events[:20])
            b.before_commit = None
            assert (await a.offset("stats"), await a.row_count()) == (0, 0)
            await asyncio.gather(
                in_order(functools.partial(a.add_events, "stats"), events, 11),
                in_order(functools.partial(b.add_events, "stats"), events, 5),
            )
            assert a.duplicates + b.duplicates == len(events)
            assert await a.offset("stats") == events[-1][0]
            days = (D0 - 3, D0 + 1)
            for tenant in ("t", "u"):
                cats = ["", "c1", "c2", "solo"]
                want = sorted(await lite.query(tenant, cats, days))
                assert sorted(await b.query(tenant, cats, days)) == want
                assert want  # something was counted
                for desc in (True, False):
                    page = (2, 0, desc)
                    assert await a.ranked(tenant, days, "delivered", page) == await lite.ranked(
                        tenant, days, "delivered", page
                    )
            # a unique open is counted once per (message, recipient), across batches/nodes
            totals = {m: n for c, _, m, n in await a.query("t", [""], days) if c == ""}
            assert totals.get("unique_opens", 0) > 0
        finally:
            await lite.close()
            await a.close()
            await b.close()

    asyncio.run(main())
