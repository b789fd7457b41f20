"""The dispatcher of one webhook against an in-memory log, a real webhooks.db and a
scripted poster: filtering, order, retries, dead letters, the ledger, resuming."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from postline.config import from_dict
from postline.events.consumer import RunnerSet
from postline.model.events import EventRecord, make_event
from postline.spool.memory import MemorySpool
from postline.webhooks.audit_view import audit_state
from postline.webhooks.dispatcher import Deps, WebhookConsumer
from postline.webhooks.metrics import WebhookMetrics
from postline.webhooks.poster import Posted
from postline.webhooks.replay import LogReplaySource
from postline.webhooks.settings import Webhook
from postline.webhooks.store import WebhookStore


class ScriptedPoster:
    """Answers from ``script`` (True/False per call), then True; keeps every body."""

    def __init__(self, script: list[bool] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[bytes] = []
        self.ok: list[bytes] = []

    async def post(self, url: str, body: bytes, signer: object) -> Posted:
        self.bodies.append(body)
        ok = self.script.pop(0) if self.script else True
        if ok:
            self.ok.append(body)
            return Posted(True, 200)
        return Posted(False, 500, "the receiver answered 500")


def _ev(
    kind: str, tenant: str = "t1", ts: float | None = None, cat: str | None = None
) -> EventRecord:
    return make_event(
        kind,
        tenant=tenant,
        email="a@example.com",
        ts=time.time() if ts is None else ts,
        sg_message_id="m",
        smtp_id="<m@x>",
        categories=[cat] if cat else None,
    )


def _config(**webhooks: Any) -> Any:
    base = {"retry_min": "20ms", "retry_max": "50ms", "max_age": "72h", "batch_wait": "0ms"}
    return from_dict({"webhooks": {**base, **webhooks}}).webhooks


def _hook(**kw: Any) -> Webhook:
    base: dict[str, Any] = {
        "id": "h1",
        "tenant": "t1",
        "url": "http://x.test/",
        "enabled": True,
        "types": frozenset({"processed", "delivered"}),
    }
    return Webhook(**{**base, **kw})


Run = Callable[[Deps, MemorySpool, ScriptedPoster], Awaitable[None]]


def _run(tmp: Path, poster: ScriptedPoster, body: Run, **cfg: Any) -> None:
    async def main() -> None:
        spool = MemorySpool()
        store = await WebhookStore.open(tmp)
        await store.run(store.db.insert, _hook())
        deps = Deps(_config(**cfg), store, poster, spool, WebhookMetrics())  # type: ignore[arg-type]
        try:
            await body(deps, spool, poster)
        finally:
            await store.close()

    asyncio.run(main())


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def _ids(bodies: list[bytes]) -> list[str]:
    return [e["event"] + ":" + e["sg_event_id"] for b in bodies for e in json.loads(b)]


def test_only_the_tenants_events_of_its_types_in_order(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        events = [_ev("processed"), _ev("delivered", "t2"), _ev("bounce"), _ev("delivered")]
        await spool.record(events, [])
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(_hook(), deps), batch=2, poll=0.01)
        await _until(lambda: len(_ids(poster.ok)) == 2)
        await runners.close()
        want = [events[0], events[3]]
        assert _ids(poster.ok) == _ids([b"[" + e.data + b"]" for e in want])
        state = {h.id: h for h in audit_state(tmp_path)}["h1"]
        assert state.delivered == [(1, 4)] and state.dead == []  # one coalesced range

    _run(tmp_path, ScriptedPoster(), body)


def test_a_failing_batch_is_retried_before_the_next(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        await spool.record([_ev("processed") for _ in range(3)], [])
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(_hook(), deps), batch=5000, poll=0.01)
        await _until(lambda: len(poster.ok) == 3)
        await runners.close()
        assert poster.bodies[:4] == [poster.ok[0]] * 3 + [poster.ok[1]]  # same body, in order
        assert deps.metrics.of("h1").failures == 2
        assert deps.metrics.of("h1").posted_events == 3

    _run(tmp_path, ScriptedPoster([False, False]), body, batch_events=1)


def test_past_max_age_a_batch_is_dead_lettered_and_the_next_goes_on(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        now = deps.clock()
        old = [_ev("processed", ts=now - 3600) for _ in range(2)]
        await spool.record([*old, _ev("delivered", ts=now)], [])
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(_hook(), deps), batch=5000, poll=0.01)
        await _until(lambda: len(poster.ok) == 1)
        await runners.close()
        store = deps.store
        (letter,) = await store.run(store.db.dead_letters, "t1", "h1", 10, 0, None)
        assert letter.count == 2 and (letter.first_offset, letter.last_offset) == (1, 2)
        assert _ids([letter.body]) == _ids([b"[" + b",".join(e.data for e in old) + b"]"])
        assert "500" in letter.reason
        state = audit_state(tmp_path)[0]
        assert state.dead == [(1, 2)] and state.delivered == [(3, 3)]
        assert state.dead_event_ids == {json.loads(e.data)["sg_event_id"] for e in old}
        assert deps.metrics.of("h1").dead_events == 2

    # max_age 1s: events an hour old fail once and are dead at once (no final attempt).
    _run(tmp_path, ScriptedPoster([False]), body, max_age="1s", batch_events=2)


def test_resume_continues_after_the_ledger(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        await spool.record([_ev("processed") for _ in range(4)], [])
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(_hook(), deps), batch=5000, poll=0.01)
        await _until(lambda: len(poster.ok) == 1)
        await runners.close()
        spool._consumers.clear()  # the log's offset lost: the ledger still knows
        await spool.record([_ev("processed")], [])
        again = RunnerSet(spool)
        again.add(WebhookConsumer(_hook(), deps), batch=5000, poll=0.01)
        await _until(lambda: len(poster.ok) == 2)
        await again.close()
        assert len(json.loads(poster.ok[1])) == 1

    _run(tmp_path, ScriptedPoster(), body)


def test_a_new_webhook_starts_at_its_start_offset(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        await spool.record([_ev("processed") for _ in range(3)], [])
        hook = _hook(id="h2", start_offset=3)
        await deps.store.run(deps.store.db.insert, hook)
        await spool.record([_ev("processed")], [])
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(hook, deps), batch=5000, poll=0.01)
        await _until(lambda: len(poster.ok) == 1)
        await asyncio.sleep(0.05)
        await runners.close()
        assert len(poster.ok) == 1 and len(json.loads(poster.ok[0])) == 1

    _run(tmp_path, ScriptedPoster(), body)


def test_interrupt_ends_a_retry_wait(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        await spool.record([_ev("processed")], [])
        runners = RunnerSet(spool)
        consumer = WebhookConsumer(_hook(), deps)
        runners.add(consumer, batch=5000, poll=0.01)
        await _until(lambda: len(poster.bodies) == 1)  # now waiting retry_max (1 h)
        consumer.interrupt()
        async with asyncio.timeout(2):
            await runners.remove(consumer.name)

    _run(tmp_path, ScriptedPoster([False]), body, retry_min="1h", retry_max="1h")


def test_a_trickle_fills_one_batch_within_batch_wait(tmp_path: Path) -> None:
    async def body(deps: Deps, spool: MemorySpool, poster: ScriptedPoster) -> None:
        runners = RunnerSet(spool)
        runners.add(WebhookConsumer(_hook(), deps), batch=5000, poll=0.01)
        for _ in range(3):
            await spool.record([_ev("processed", ts=deps.clock())], [])
            await asyncio.sleep(0.02)
        await _until(lambda: len(_ids(poster.ok)) == 3)
        await runners.close()
        assert len(poster.ok) == 1

    _run(tmp_path, ScriptedPoster(), body, batch_wait="500ms")


def test_log_replay_source_filters_the_window() -> None:
    async def main() -> None:
        spool = MemorySpool()
        events = [
            _ev("processed", ts=10, cat="a"),
            _ev("processed", ts=20, cat="b"),
            _ev("delivered", ts=20, cat="a"),
            _ev("processed", "t2", ts=20, cat="a"),
            _ev("processed", ts=30, cat="a"),
        ]
        await spool.record(events, [])
        source = LogReplaySource(spool, scan=2)

        async def got(types: Any, cats: Any) -> list[EventRecord]:
            return [e async for chunk in source.window("t1", 15, 30, types, cats) for e in chunk]

        assert await got(None, None) == events[1:3]
        assert await got(frozenset({"delivered"}), None) == [events[2]]
        assert await got(None, frozenset({"a"})) == [events[2]]

    asyncio.run(main())
