"""The webhook store's calls behave alike on webhooks.db (SQLite, embedded mode) and on
PostgreSQL (cluster mode), through the one calling convention the webhook modules use:
``await store.run(store.db.<call>, ...)``. The PostgreSQL store also scopes what several
nodes share: ledger offsets per event log, interrupted replays per node."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from postline.testing.postgres import admin_dsn, fresh_database
from postline.webhooks.pg_store import PgWebhookStore
from postline.webhooks.settings import Webhook
from postline.webhooks.store import Replay, WebhookStore


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as dsn:
        yield dsn


def hook(hook_id: str, tenant: str = "t1", url: str = "http://r.example/h") -> Webhook:
    return Webhook(
        hook_id, tenant, url, True, frozenset({"delivered", "spam_report"}),
        friendly_name="n", signed=True, private_key=b"\x00der", public_key="pk",
        start_offset=7, created=1.5, updated=2.5,
    )  # fmt: skip


@asynccontextmanager
async def opened(kind: str, tmp: Path, dsn: str, log: str, node: str) -> AsyncIterator[Any]:
    if kind == "sqlite":
        store: Any = await WebhookStore.open(tmp)
    else:
        store = await PgWebhookStore.open(dsn, log, node)
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_settings_ledger_dead_letters_and_replays(kind: str, tmp_path: Path, dsn: str) -> None:
    async def scenario() -> None:
        async with opened(kind, tmp_path, dsn, f"dc-{kind}", "node1") as s:
            db = s.db
            a, b = hook(f"{kind}-a"), hook(f"{kind}-b", url="http://r.example/2")
            await s.run(db.insert, a)
            await s.run(db.insert, b)
            assert await s.run(db.get, "t1", a.id) == a
            assert await s.run(db.get, "t2", a.id) is None  # another tenant's: not found
            assert [h.id for h in await s.run(db.tenant_hooks, "t1")] == [a.id, b.id]
            await s.run(db.update, Webhook(**{**_fields(b), "enabled": False, "url": "u"}))
            assert [h.id for h in await s.run(db.enabled) if h.id.startswith(kind)] == [a.id]
            assert (await s.run(db.get, "t1", b.id)).url == "u"

            # nothing posted yet: the embedded store says start_offset; the cluster's says
            # None (start_offset is the head of the log of the node that made it; the
            # dispatcher then starts at the creation time in its own log)
            fresh = 7 if kind == "sqlite" else None
            assert await s.run(db.resume_offset, a.id) == fresh
            await s.run(db.delivered, a.id, 10, 20, 3, 100.0)
            await s.run(db.delivered, a.id, 25, 30, 2, 101.0)  # grows the same row
            await s.run(db.dead, a, 31, 40, 4, b"[{}]", "HTTP 500", 102.0)
            assert await s.run(db.resume_offset, a.id) == 40
            letters = await s.run(db.dead_letters, "t1", a.id, 10, 0, None)
            assert [(x.first_offset, x.last_offset, x.count, x.body) for x in letters] == [
                (31, 40, 4, b"[{}]")
            ]
            assert await s.run(db.dead_letters, "t1", None, 10, 0, [letters[0].id]) == letters
            assert await s.run(db.dead_letters, "t2", None, 10, 0, None) == []
            await s.run(db.dead_letter_replayed, letters[0], 103.0)
            assert await s.run(db.dead_letters, "t1", a.id, 10, 0, None) == []
            assert await s.run(db.resume_offset, a.id) == 40  # a replay is not live progress

            r = Replay(f"{kind}-r1", "t1", a.id, "window", "{}", "running", 0, 0, 0, "", 5.0, None)
            await s.run(db.replay_insert, r)
            await s.run(db.replay_progress, r.id, (3, 1, 0), "running", "", 6.0)
            got = await s.run(db.replay, "t1", r.id)
            assert (got.events, got.batches, got.status, got.finished) == (3, 1, "running", None)
            assert await s.run(db.replay, "t2", r.id) is None
            await s.run(db.interrupt_replays, 7.0)
            assert (await s.run(db.replay, "t1", r.id)).status == "interrupted"

            await s.run(db.delete, a.id)
            assert await s.run(db.get, "t1", a.id) is None
            gone = 0 if kind == "sqlite" else None  # its ledger went with it
            assert await s.run(db.resume_offset, a.id) == gone

    asyncio.run(scenario())


def test_postgres_scopes_offsets_per_log_and_interrupts_per_node(dsn: str) -> None:
    async def scenario() -> None:
        async with (
            opened("postgres", Path(), dsn, "dc1", "node1") as one,
            opened("postgres", Path(), dsn, "dc2", "node2") as two,
        ):
            h = hook("scoped")
            await one.db.insert(h)
            await one.db.delivered(h.id, 10, 50, 5, 1.0)
            assert await one.db.resume_offset(h.id) == 50
            assert await two.db.resume_offset(h.id) is None  # dc2's log: not comparable
            r = Replay("scoped-r", "t1", h.id, "window", "{}", "running", 0, 0, 0, "", 1.0, None)
            await one.db.replay_insert(r)
            await two.db.interrupt_replays(2.0)  # node2 starting: node1's replay runs on
            assert (await one.db.replay("t1", r.id)).status == "running"  # type: ignore[union-attr]
            await one.db.delete(h.id)
            await one.db.delivered(h.id, 60, 70, 1, 3.0)  # a last batch after the delete
            assert await one.db.resume_offset(h.id) is None  # left no ledger row behind

    asyncio.run(scenario())


def _fields(h: Webhook) -> dict[str, Any]:
    return {name: getattr(h, name) for name in Webhook.__slots__}  # type: ignore[attr-defined]
