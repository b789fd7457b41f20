"""The PostgreSQL activity store's message rows (migration 6, activity/pg_messages.py)
against the search over events they replace (pg_activity_reference.py): random logs
ingested in random batches by two nodes at once, with replayed and overlapping batches
and a message's events split across batches, answer every search and hold every column
exactly as the GROUP BY over the events did; retention deletes the rows of messages whose
last day it dropped; migration 6 builds the rows of the events already stored."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.integration.pg_activity_reference import (
    COLUMNS,
    DAY,
    T0,
    events_relation,
    events_search_sql,
    normalized,
    queries,
    random_log,
)

from postline.activity import pg_schema, pg_store
from postline.activity.pg_api import SearchPlans
from postline.activity.pg_messages import EPOCH, records
from postline.activity.pg_store import POOL_SIZE, PgActivityStore, day_of, partition_name
from postline.activity.query_sql import compile_pg, numbered
from postline.backends.postgres.migrate import migrate_dsn
from postline.backends.postgres.migrations import MIGRATIONS
from postline.events.consumer import Batch
from postline.model.events import EventRecord
from postline.testing.postgres import admin_dsn, fresh_database

KILL = "SELECT pg_terminate_backend(pg_backend_pid())"
D0 = int(T0 // DAY)


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


async def relation(store: PgActivityStore, sql: str, tenant: str) -> list[tuple[Any, ...]]:
    return normalized(await store.query(f"SELECT {COLUMNS} FROM ({sql}) AS m", [tenant]))


async def assert_same_answers(store: PgActivityStore, log: Batch) -> None:
    """Every column of every message, and every search of ``queries``, as the GROUP BY
    over the stored events gives them."""
    for tenant in ("t", "u"):
        want = await relation(store, events_relation(None), tenant)
        assert await relation(store, pg_schema.message_relation(None), tenant) == want
        for text in queries(log):
            c = compile_pg(text)
            col, val = c.prefilter or (None, None)
            params = [tenant, *([val] if col else []), *c.params, 1000]
            got = await store.query(pg_schema.search_sql(c.where, col), params)
            assert got == await store.query(events_search_sql(c.where, col), params), text


async def feed(store: PgActivityStore, log: Batch, rng: random.Random) -> None:
    """A node's reads of the log: batches of random sizes, sometimes read again whole or
    from a few events back (what a node that lost its connection may read)."""
    i = 0
    while i < len(log):
        n = rng.randint(1, 12)
        await store.ingest(log[i : i + n])
        if rng.random() < 0.2:
            assert await store.ingest(log[max(0, i - rng.randint(0, 5)) : i + n]) == 0
        i += n


async def reset(store: PgActivityStore) -> None:
    await store.pool.execute(
        f"TRUNCATE {pg_schema.TABLE}, {pg_schema.MESSAGES};"
        ' UPDATE pipeline_offsets SET "offset" = 0'
    )


def test_message_rows_answer_as_the_events_did_two_nodes_random_batches(dsn: str) -> None:
    async def main() -> None:
        a = await PgActivityStore.open(dsn, clock=lambda: T0)
        b = await PgActivityStore.open(dsn, clock=lambda: T0)
        try:
            for seed in range(20):
                rng = random.Random(seed)
                log = random_log(rng, rng.randint(5, 60))
                await reset(a)
                if seed % 4 == 0:  # one node alone, then the whole log replayed
                    await feed(a, log, rng)
                    assert await b.ingest(log) == 0
                else:  # both nodes read the whole log at once, in their own batches
                    await asyncio.gather(feed(a, log, random.Random(seed + 100)),
                                         feed(b, log, random.Random(seed + 200)))  # fmt: skip
                assert await a.rows() == len(log)
                assert await a.offset() == len(log)
                await assert_same_answers(a, log)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_message_split_across_batches_and_a_crash_before_commit(dsn: str) -> None:
    rng = random.Random(5)
    log = [(o, r) for o, r in random_log(rng, 30)]

    async def main() -> None:
        store = await PgActivityStore.open(dsn, clock=lambda: T0)
        try:
            # a crash after the rows and message rows, before COMMIT: none of it is kept
            store.before_commit = lambda conn: conn.execute(KILL)
            with pytest.raises(Exception):  # noqa: B017 (the connection is gone)
                await store.ingest(log[:20])
            store.before_commit = None
            assert (await store.rows(), await store.messages(), await store.offset()) == (0, 0, 0)
            # one event a batch: every message merged event by event
            for item in log:
                assert await store.ingest([item]) == 1
            await assert_same_answers(store, log)
            assert await store.messages() == len(
                {(r.tenant, r.sg_message_id, r.email.lower()) for _, r in log}
            )
        finally:
            await store.close()

    asyncio.run(main())


def ev(kind: str, msg: str, ts: float, to: str = "a@x.test", tenant: str = "t") -> EventRecord:
    data = f'{{"event": "{kind}", "sg_message_id": "{msg}", "category": ["{kind}"]}}'.encode()
    meta = b'{"from_email": "f@x.test", "subject": "S"}' if kind == "processed" else b""
    return EventRecord(ts, tenant, kind, to, msg, data, meta)


def test_retention_deletes_the_messages_whose_last_day_it_dropped(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_store, "PRUNE_CHUNK", 2)  # several chunks per tenant
    old, cutoff = T0 - 3 * DAY, (D0 - 1) * DAY  # the cutoff day is D0 - 1
    events = [
        ev("processed", "gone1", old), ev("delivered", "gone1", old + 5),
        ev("processed", "gone2", old, tenant="u"), ev("processed", "gone3", old, "b@x.test"),
        ev("processed", "gone4", cutoff - 0.5), ev("processed", "kept_edge", cutoff),
        ev("processed", "kept", old), ev("delivered", "kept", old + 1), ev("open", "kept", T0),
        ev("processed", "new", T0),
    ]  # fmt: skip

    async def main() -> None:
        store = await PgActivityStore.open(dsn, clock=lambda: T0)
        try:
            await store.ingest(list(enumerate(events, 1)))
            assert await store.messages() == 7
            dropped = await store.prune(T0 - DAY)
            assert dropped == 7  # event rows of the two days wholly before the cutoff
            assert store.messages_pruned == 4
            rows = await store.query(
                f"SELECT msg_id, status, opens_count, categories FROM {pg_schema.MESSAGES}"
                " ORDER BY msg_id",
                [],
            )
            # "kept" has an event left: it keeps what all its events made of it
            assert rows == [
                ("kept", "delivered", 1, ["processed"]),
                ("kept_edge", "processing", 0, ["processed"]),
                ("new", "processing", 0, ["processed"]),
            ]
            assert await store.prune(T0 - DAY) == 0 and store.messages_pruned == 4
            # a late event of a deleted message: a new row, from what arrives from now on
            assert await store.ingest([(11, ev("click", "gone1", old + 9))]) == 1
            got = await store.query(
                f"SELECT status, clicks_count, categories, from_email FROM {pg_schema.MESSAGES}"
                " WHERE msg_id = 'gone1'",
                [],
            )
            assert got == [("delivered", 1, [], "")]
            assert await store.prune(T0 - DAY) == 1 and store.messages_pruned == 5
        finally:
            await store.close()

    asyncio.run(main())


async def _copy_events(dsn: str, log: Batch) -> None:
    """``log`` written as a node before migration 6 wrote it: partitions and COPY."""
    conn = await asyncpg.connect(dsn)
    try:
        for day in sorted({day_of(r.ts) for _, r in log}):
            low, high = EPOCH + timedelta(days=day), EPOCH + timedelta(days=day + 1)
            await conn.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF {pg_schema.TABLE}"
                f" FOR VALUES FROM ('{low:%Y-%m-%d}') TO ('{high:%Y-%m-%d}')"
            )
        await conn.copy_records_to_table(
            pg_schema.TABLE, records=records(log), columns=list(pg_schema.COLUMNS)
        )
        await conn.execute(
            "INSERT INTO pipeline_offsets (consumer, \"offset\") VALUES ('activity', $1)",
            log[-1][0],
        )
    finally:
        await conn.close()


def test_migration_6_makes_the_rows_of_the_events_already_stored(dsn: str) -> None:
    rng = random.Random(9)
    log = random_log(rng, 80)
    nul = EventRecord(T0, "t", "processed", "nul@x.test", "mnul",
                      b'{"category": ["a\\u0000"], "k": "v"}', b"")  # fmt: skip
    log.append((log[-1][0] + 1, nul))

    async def main() -> None:
        assert await migrate_dsn(dsn, MIGRATIONS[:5]) == [1, 2, 3, 4, 5]
        await _copy_events(dsn, log)
        store = await PgActivityStore.open(dsn, clock=lambda: T0)  # applies migration 6
        try:
            indexes = await store.query(
                "SELECT indexname FROM pg_indexes WHERE tablename = ?", [pg_schema.TABLE]
            )
            assert [r[0] for r in indexes] == ["activity_events_msg_id"]
            # the message whose JSON jsonb refuses: no categories nor custom args
            got = await store.query(
                f"SELECT categories, unique_args FROM {pg_schema.MESSAGES} WHERE msg_id = 'mnul'",
                [],
            )
            assert got == [([], {})]
            await store.pool.execute(f"DELETE FROM {pg_schema.TABLE} WHERE msg_id = 'mnul'")
            await store.pool.execute(f"DELETE FROM {pg_schema.MESSAGES} WHERE msg_id = 'mnul'")
            await assert_same_answers(store, log[:-1])
            # and ingest goes on from there, merging into the rows the migration made
            more = [(log[-1][0] + i, r) for i, (_, r) in enumerate(random_log(rng, 20), 1)]
            await store.ingest(more)
            await assert_same_answers(store, more)
        finally:
            await store.close()

    asyncio.run(main())


def test_search_plans_use_the_message_indexes(dsn: str) -> None:
    """The searches a listing runs read a few index entries, whatever the table's size:
    the listing and a range of last_event_time the listing index, a status other than
    delivered its partial index, an address or a msg_id the primary key (or, here where
    five addresses are all there is, another index with the address in its condition)."""
    rng = random.Random(3)
    log = random_log(rng, 300)

    async def main() -> None:
        store = await PgActivityStore.open(dsn, clock=lambda: T0)
        try:
            await store.ingest(log)
            await store.pool.execute(f"ANALYZE {pg_schema.MESSAGES}")
            rec = log[0][1]
            for text, used in (
                ("", "activity_messages_recent"),
                ('status="not_delivered"', "activity_messages_status"),
                (f'to_email="{rec.email}"', "to_email = "),
                (f'msg_id="{rec.sg_message_id}"', "msg_id = "),
                ('last_event_time > TIMESTAMP "2027-01-15T00:00:00Z"', "activity_messages_recent"),
            ):
                c = compile_pg(text)
                col, val = c.prefilter or (None, None)
                params = ["t", *([val] if col else []), *c.params, 10]
                async with store.pool.acquire() as conn:
                    await conn.execute("SET enable_seqscan = off")  # a small table as a big one
                    plan = await conn.fetch(
                        "EXPLAIN " + numbered(pg_schema.search_sql(c.where, col)), *params
                    )
                    await conn.execute("RESET enable_seqscan")
                text_plan = "\n".join(r[0] for r in plan)
                if used.startswith("activity_"):
                    assert f"Index Scan using {used}" in text_plan, (text, text_plan)
                else:
                    conds = [r[0] for r in plan if "Index Cond" in r[0] and used in r[0]]
                    assert conds, (text, text_plan)
                assert "Seq Scan on activity_messages" not in text_plan, text_plan
            # the API's searches are planned for their values; the setting does not outlive
            # the search (the pool resets a connection it takes back)
            api = SearchPlans(store)
            assert await api.query("SHOW plan_cache_mode", []) == [("force_custom_plan",)]
            for _ in range(POOL_SIZE):
                assert await store.query("SHOW plan_cache_mode", []) == [("auto",)]
            assert await api.query(pg_schema.SELECT_MESSAGE, ["m0", "t"]) is not None
        finally:
            await store.close()

    asyncio.run(main())
