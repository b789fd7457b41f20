"""The activity store on a real DuckDB file: what an insert extracts, the offset kept with
the rows, duplicates skipped, retention, the message relation, replay pages, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from postline.activity import schema
from postline.activity.consumer import ActivityConsumer
from postline.activity.replay import StoreReplaySource
from postline.activity.store import ActivityStore, QueryTimeout
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


def test_insert_extracts_fields_and_keeps_offset(tmp_path: Path) -> None:
    async def body(store: ActivityStore) -> list[tuple[Any, ...]]:
        consumer = ActivityConsumer(store)
        assert await consumer.resume() == 0
        await consumer.handle(
            [
                (1, event("processed", meta=META, send_at=0)),
                (2, event("delivered", response="250 ok", categories=None)),
                (3, event("bounce", msg="m2", reason="550 no", status="5.1.1", type="bounce")),
            ]
        )
        return await store.query(
            'SELECT "offset", to_email, event, from_email, subject, template_id,'
            " asm_group_id, categories, unique_args, reason, status FROM events ORDER BY 1",
            [],
        )

    rows = run(tmp_path, body)
    assert rows == [
        (1, "bob@example.com", "processed", "a@x.com", "Hi", "d-1", 7, ["c1"], {"plan": "gold"},
         None, None),
        (2, "bob@example.com", "delivered", None, None, None, None, [], None, None, None),
        (3, "bob@example.com", "bounce", None, None, None, None, ["c1"], None, "550 no",
         "5.1.1"),
    ]  # fmt: skip

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
        await ActivityConsumer(store).handle([(1, rec)])
        return await store.query("SELECT categories, from_email, unique_args FROM events", [])

    assert run(tmp_path, body) == [(["solo"], None, None)]


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


def messages(store: ActivityStore, where: str = "true", params: list[object] | None = None) -> Any:
    sql = f"SELECT * FROM ({schema.message_relation(None)}) WHERE {where} ORDER BY msg_id"
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
