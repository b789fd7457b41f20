"""The activity store on a real DuckDB file: what an insert extracts, the offset kept with
the rows, duplicates skipped, retention, the message relation, replay pages, timeouts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec
import pytest

from postline.activity import schema
from postline.activity.consumer import ActivityConsumer
from postline.activity.replay import StoreReplaySource
from postline.activity.store import INGEST_THREADS, ActivityStore, QueryTimeout
from postline.model.events import EventRecord, make_event

T = TypeVar("T")
T0 = 1_800_000_000.0
META = msgspec.json.encode(
    {"from_email": "a@x.com", "subject": "Hi", "template_id": "d-1", "asm_group_id": 7}
)


def event(
    kind: str,
    msg: str = "m1",
    to: str = "Bob@Example.com",
    ts: float = T0,
    meta: bytes = b"",
    tenant: str = "t",
    **extra: Any,
) -> EventRecord:
    cats = extra.pop("categories", ["c1"])
    args = extra.pop("custom_args", {"plan": "gold"})
    e = make_event(
        kind,
        tenant=tenant,
        email=to,
        ts=ts,
        sg_message_id=msg,
        smtp_id="<x@y>",
        categories=cats,
        custom_args=args,
        extra=extra,
    )
    return EventRecord(e.ts, e.tenant, e.event, e.email, e.sg_message_id, e.data, meta)


def run(tmp_path: Path, body: Callable[[ActivityStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await ActivityStore.open(tmp_path)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_insert_stores_plain_columns_and_keeps_offset(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[Any]:
        consumer = ActivityConsumer(store)
        assert await consumer.resume() == 0
        batch = [
            (1, event("processed", meta=META, send_at=0)),
            (2, event("delivered", response="250 ok", categories=None)),
            (3, event("bounce", msg="m2", reason="550 no", status="5.1.1", type="bounce")),
        ]
        await consumer.handle(batch)
        await consumer.flush()
        rows = await store.query(
            'SELECT "offset", to_email, event, from_email, subject, template_id,'
            " asm_group_id, data FROM events ORDER BY 1",
            [],
        )
        detail = await store.query(schema.SELECT_MESSAGE, ["m1", "t"])
        return [rows, [r.data.decode() for _, r in batch], detail]

    rows, datas, detail = run(tmp_path, body)
    assert rows == [
        (1, "bob@example.com", "processed", "a@x.com", "Hi", "d-1", 7, datas[0]),
        (2, "bob@example.com", "delivered", None, None, None, None, datas[1]),
        (3, "bob@example.com", "bounce", None, None, None, None, datas[2]),
    ]  # fmt: skip
    # categories and custom args are derived from the stored JSON at query time
    assert [(r[1], r[7], r[8]) for r in detail] == [
        ("processed", ["c1"], {"plan": "gold"}),
        ("delivered", [], None),
    ]

    async def reopened(store: ActivityStore) -> tuple[int, int]:
        return await store.offset(), store.row_count

    assert run(tmp_path, reopened) == (3, 3)


def test_single_category_string_and_no_meta(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[tuple[Any, ...]]:
        rec = make_event(
            "processed", tenant="t", email="a@b.c", ts=T0, sg_message_id="m", smtp_id="<i>"
        )
        obj = msgspec.json.decode(rec.data)
        obj["category"] = "solo"
        data = msgspec.json.encode(obj)
        rec = EventRecord(rec.ts, "t", "processed", "a@b.c", "m", data)
        consumer = ActivityConsumer(store)
        await consumer.handle([(1, rec)])
        await consumer.flush()
        return await messages(store, cols="categories, from_email, unique_args")

    assert run(tmp_path, body) == [(["solo"], "", {})]


def test_duplicates_skipped_and_counted(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> tuple[int, int, int]:
        consumer = ActivityConsumer(store)
        await consumer.handle([(1, event("processed")), (2, event("delivered"))])
        again = ActivityConsumer(store)  # a restart: resumes from the store's offset
        await again.resume()
        await again.handle([(2, event("delivered")), (3, event("open"))])
        return again.duplicates, await store.rows(), await store.offset()

    assert run(tmp_path, body) == (1, 3, 3)


def test_prune_removes_only_older_rows(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> tuple[int, list[tuple[Any, ...]], int]:
        batch = [(i + 1, event("processed", msg=f"m{i}", ts=T0 + i)) for i in range(10)]
        await ActivityConsumer(store).handle(batch)
        gone = await store.prune(T0 + 4)
        left = await store.query('SELECT min("offset"), count(*) FROM events', [])
        return gone, left, store.row_count

    assert run(tmp_path, body) == (4, [(5, 6)], 6)


def messages(
    store: ActivityStore,
    where: str = "true",
    params: list[object] | None = None,
    cols: str = "*",
) -> Any:
    sql = f"SELECT {cols} FROM ({schema.message_relation(None)}) WHERE {where} ORDER BY msg_id"
    return store.query(sql, ["t", *(params or [])])


def test_message_relation_aggregates_per_recipient(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[Any]:
        evs = [
            event("processed", "m1", meta=META),
            event("delivered", "m1", ts=T0 + 1),
            event("open", "m1", ts=T0 + 2),
            event("open", "m1", ts=T0 + 3),
            event("click", "m1", ts=T0 + 4, url="https://x"),
            event("processed", "m2", meta=META),
            event("bounce", "m2", ts=T0 + 5, type="bounce"),
            event("processed", "m3", meta=META),
            event("deferred", "m3", ts=T0 + 6),
            event("processed", "m4", meta=META, tenant="other"),
        ]
        await ActivityConsumer(store).handle(list(enumerate(evs, 1)))
        cols = "msg_id, status, opens_count, clicks_count, from_email, template_id, asm_group_id"
        rows = await store.query(
            f"SELECT {cols}, list_sort(events) FROM ({schema.message_relation(None)})"
            " ORDER BY msg_id",
            ["t"],
        )
        one = await store.query(
            f"SELECT msg_id FROM ({schema.message_relation('to_email')})", ["t", "bob@example.com"]
        )
        return [rows, one]

    rows, one = run(tmp_path, body)
    assert rows == [
        ("m1", "delivered", 2, 1, "a@x.com", "d-1", 7,
         ["click", "clicked", "delivered", "open", "opened", "processed"]),
        ("m2", "not_delivered", 0, 0, "a@x.com", "d-1", 7, ["bounce", "bounced", "processed"]),
        ("m3", "processing", 0, 0, "a@x.com", "d-1", 7, ["deferred", "processed"]),
    ]  # fmt: skip
    assert sorted(one) == [("m1",), ("m2",), ("m3",)]


def test_replay_window_pages_in_order_with_filters(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[Any]:
        evs = [
            event(
                "delivered" if i % 2 else "processed",
                f"m{i}",
                ts=T0 + i // 3,  # three events share each second: the cursor must not skip
                categories=["odd"] if i % 2 else ["even"],
            )
            for i in range(20)
        ]
        await ActivityConsumer(store).handle(list(enumerate(evs, 1)))
        source = StoreReplaySource(store, page=4)
        out = []
        for types, cats in ((None, None), (frozenset({"delivered"}), None), (None, {"even"})):
            pages = [
                [r.sg_message_id for r in page]
                async for page in source.window(
                    "t", T0 + 1, T0 + 5, types, cats and frozenset(cats)
                )
            ]
            out.append(pages)
        other = [p async for p in source.window("other", T0, T0 + 10, None, None)]
        return [out, other]

    (every, delivered, even), other = run(tmp_path, body)
    assert [m for page in every for m in page] == [f"m{i}" for i in range(3, 15)]
    assert max(len(page) for page in every) == 4
    assert [m for page in delivered for m in page] == [f"m{i}" for i in range(3, 15, 2)]
    assert [m for page in even for m in page] == [f"m{i}" for i in range(4, 15, 2)]
    assert other == []


def test_query_timeout_interrupts_and_store_goes_on(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> int:
        slow = "SELECT count(*) FROM range(10000000000) a WHERE a.range % 7 = 3"
        with pytest.raises(QueryTimeout):
            await store.query(slow, [], timeout=0.2)
        await ActivityConsumer(store).handle([(1, event("processed"))])
        return await store.rows()

    assert run(tmp_path, body) == 1


def test_relation_derives_categories_and_custom_args_from_the_json(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[Any]:
        evs = [
            event("processed", "m1", meta=META, categories=["a", "b"], custom_args={"k": "v"}),
            event("delivered", "m1", ts=T0 + 1, categories=["a", "b"], custom_args={"k": "v"}),
            event("processed", "m2", meta=META, categories="solo", custom_args={}),
            # no accept-time event stored (retention took it): neither
            event("delivered", "m3", categories=["late"], custom_args={"k": "w"}),
            # an accept-time event without meta (a log written before meta existed)
            event("dropped", "m4", categories=["old"], custom_args={"k": "x"}),
        ]
        await ActivityConsumer(store).handle(list(enumerate(evs, 1)))
        every = await messages(store, cols="msg_id, categories, unique_args")
        hit = await messages(store, "list_contains(categories, ?)", ["solo"], cols="msg_id")
        arg = await messages(store, "unique_args[?] = ?", ["k", "v"], cols="msg_id")
        return [every, hit, arg]

    every, hit, arg = run(tmp_path, body)
    assert every == [
        ("m1", ["a", "b"], {"k": "v"}),
        ("m2", ["solo"], {}),
        ("m3", [], {}),
        ("m4", ["old"], {"k": "x"}),
    ]
    assert hit == [("m2",)] and arg == [("m1",)]


class FlakyStore(ActivityStore):
    """Fails the next ``fail`` ingests (after releasing ``gate``, if set)."""

    fail = 0
    gate: asyncio.Event | None = None

    async def ingest(self, batch: Any, last_offset: int) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("disk full")
        await super().ingest(batch, last_offset)


def run_flaky(tmp_path: Path, body: Callable[[FlakyStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await FlakyStore.open(tmp_path)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_young_batch_acknowledged_with_its_insert_queued(tmp_path: Path) -> None:
    async def body(store: FlakyStore) -> list[Any]:
        consumer = ActivityConsumer(store, early_ack=3600, clock=lambda: T0 + 60)
        store.gate = asyncio.Event()
        await consumer.handle([(1, event("processed")), (2, event("delivered"))])
        queued = (consumer.early_acks, await store.offset(), await store.rows())
        store.gate.set()
        await consumer.flush()
        return [queued, await store.offset(), await store.rows()]

    # handle returned before the insert ran; flush waits for it
    assert run_flaky(tmp_path, body) == [(1, 0, 0), 2, 2]


def test_old_batch_is_stored_before_handle_returns(tmp_path: Path) -> None:
    async def body(store: FlakyStore) -> tuple[int, int, int]:
        # the oldest event is older than early_ack: the log may prune it once acknowledged
        consumer = ActivityConsumer(store, early_ack=3600, clock=lambda: T0 + 3601)
        await consumer.handle([(1, event("processed")), (2, event("delivered", ts=T0 + 10))])
        return consumer.early_acks, await store.offset(), await store.rows()

    assert run_flaky(tmp_path, body) == (0, 2, 2)


def test_failed_queued_insert_retried_before_the_next_batch(tmp_path: Path) -> None:
    async def body(store: FlakyStore) -> list[Any]:
        consumer = ActivityConsumer(store, early_ack=3600, clock=lambda: T0)
        store.fail = 1  # the queued insert fails, its retry succeeds
        await consumer.handle([(1, event("processed", "m1"))])
        await consumer.handle([(2, event("processed", "m2"))])
        await consumer.flush()
        first = [consumer.retries, await store.offset(), await store.rows()]
        store.fail = 2  # the queued insert and its retry fail: the next handle raises
        await consumer.handle([(3, event("processed", "m3"))])
        with pytest.raises(RuntimeError):
            await consumer.handle([(4, event("processed", "m4"))])
        assert await store.offset() == 2
        await consumer.handle([(4, event("processed", "m4"))])  # the runner's retry
        await consumer.flush()
        offsets = await store.query('SELECT "offset" FROM events ORDER BY 1', [])
        return [first, consumer.retries, await store.offset(), offsets]

    first, retries, offset, offsets = run_flaky(tmp_path, body)
    assert first == [1, 2, 2]
    assert retries == 3 and offset == 4 and offsets == [(1,), (2,), (3,), (4,)]


def test_resume_drops_a_failed_queued_batch_and_returns_the_stored_offset(
    tmp_path: Path,
) -> None:
    async def body(store: FlakyStore) -> tuple[int | None, int, int]:
        consumer = ActivityConsumer(store, early_ack=3600, clock=lambda: T0)
        await consumer.handle([(1, event("processed", "m1"))])
        await consumer.flush()
        store.fail = 1
        await consumer.handle([(2, event("processed", "m2"))])  # queued; its insert fails
        resumed = await consumer.resume()  # a runner restart reads from here again
        await consumer.handle([(2, event("processed", "m2"))])
        await consumer.flush()
        return resumed, consumer.duplicates, await store.rows()

    assert run_flaky(tmp_path, body) == (1, 0, 2)


def test_data_column_is_zstd_compressed_and_checkpoints_are_rare(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> set[str]:
        (threshold,) = await store.query("SELECT current_setting('checkpoint_threshold')", [])
        assert threshold == ("61.0 MiB",)  # 64 MB, not DuckDB's 16
        batch = [(i + 1, event("processed", msg=f"m{i}", to=f"r{i}@x.com")) for i in range(5000)]
        await ActivityConsumer(store).handle(batch)
        await store.query("CHECKPOINT", [])
        rows = await store.query(
            "SELECT DISTINCT compression FROM pragma_storage_info('events')"
            " WHERE column_name = 'data' AND segment_type = 'VARCHAR'",
            [],
        )
        return {str(r[0]) for r in rows}

    assert run(tmp_path, body) == {"ZSTD"}


def test_store_of_the_earlier_layout_still_loads(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "activity.duckdb"))
    conn.execute(
        'CREATE TABLE events ("offset" BIGINT NOT NULL, ts TIMESTAMP NOT NULL,'
        " tenant VARCHAR NOT NULL, msg_id VARCHAR NOT NULL, to_email VARCHAR NOT NULL,"
        " event VARCHAR NOT NULL, from_email VARCHAR, subject VARCHAR, template_id VARCHAR,"
        " asm_group_id BIGINT, categories VARCHAR[], unique_args MAP(VARCHAR, VARCHAR),"
        " reason VARCHAR, status VARCHAR, sg_event_id VARCHAR, data VARCHAR NOT NULL)"
    )
    conn.close()

    async def body(store: ActivityStore) -> list[Any]:
        await ActivityConsumer(store).handle([(1, event("processed", meta=META))])
        return await messages(store, cols="msg_id, from_email, categories, unique_args")

    assert run(tmp_path, body) == [("m1", "a@x.com", ["c1"], {"plan": "gold"})]


def test_ingest_runs_on_one_duckdb_thread_queries_on_the_default(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[Any]:
        await ActivityConsumer(store).handle([(1, event("processed"))])
        after_ingest = store._threads.current
        (setting,) = await store.query("SELECT current_setting('threads')", [])
        await ActivityConsumer(store).handle([(2, event("delivered"))])
        return [after_ingest, setting[0], store._threads.default, store._threads.current]

    after_ingest, in_query, default, again = run(tmp_path, body)
    assert after_ingest == INGEST_THREADS == again == 1
    assert in_query == default == (os.cpu_count() or 1)
