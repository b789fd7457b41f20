"""Replays: a past window of events, or dead letters, posted again to a webhook.

Each replay is a task of its own with its own reads and posts, beside the live
dispatchers (which it never waits for or holds back): the same batching, the same poster
and signature, its own retries (doubling from ``retry_min`` to ``retry_max``; a batch
still failing ``max_age`` after the replay began ends the replay as ``failed``). Its state
and counts are rows of webhooks.db (``GET /v3/user/webhooks/event/replay/{id}``); a replay
that was running when the node stopped is marked ``interrupted`` at the next start.

A window's events come from ``ctx.replay_source`` (the activity store, which keeps them
for ``activity.retention``) or, without one, from :class:`LogReplaySource`, which scans
the event log (kept for ``events.retention``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec

from postline.events.log import EventLog
from postline.events.pipeline import ReplaySource
from postline.model.events import EventRecord
from postline.schedule.backoff import next_attempt_at
from postline.webhooks import batching
from postline.webhooks.dispatcher import Deps, signer_for
from postline.webhooks.settings import Webhook
from postline.webhooks.store import DeadLetter, Replay

log = logging.getLogger("postline.webhooks")

MAX_RUNNING = 2  # replays running at once per tenant
KEEP = 1000  # finished replays kept for GET
SCAN = 5000  # events per read of the log scan


class _Categories(msgspec.Struct):
    category: str | list[str] | None = None


_decode_categories = msgspec.json.Decoder(_Categories).decode


def has_category(record: EventRecord, wanted: frozenset[str]) -> bool:
    found = _decode_categories(record.data).category
    if found is None:
        return False
    return (found in wanted) if isinstance(found, str) else not wanted.isdisjoint(found)


class LogReplaySource:
    """A tenant's events of a window, read from the whole event log (oldest first)."""

    def __init__(self, events: EventLog, scan: int = SCAN) -> None:
        self.events = events
        self.scan = scan

    async def window(
        self,
        tenant: str,
        start: float,
        end: float,
        types: frozenset[str] | None,
        categories: frozenset[str] | None,
    ) -> AsyncIterator[list[EventRecord]]:
        after = 0
        while rows := await self.events.read(after, self.scan):
            after = rows[-1][0]
            found = [
                e
                for _, e in rows
                if e.tenant == tenant
                and start <= e.ts < end
                and (types is None or e.event in types)
                and (categories is None or has_category(e, categories))
            ]
            if found:
                yield found


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float
    types: frozenset[str] | None  # event names
    categories: frozenset[str] | None


class Replays:
    """The running replays of a node."""

    def __init__(self, deps: Deps, source: Callable[[], ReplaySource]) -> None:
        self.deps = deps
        self.source = source
        self._tasks: dict[str, tuple[Webhook, asyncio.Task[None]]] = {}
        self.live: dict[str, Counts] = {}  # the counts of running replays, by id

    def running(self, tenant: str) -> int:
        return sum(1 for hook, _ in self._tasks.values() if hook.tenant == tenant)

    async def window(self, hook: Webhook, window: Window, request: str) -> Replay:
        replay, counts = await self._new(hook, "window", request)
        self._spawn(replay, hook, counts, self._run_window(hook, window, counts, replay.created))
        return replay

    async def dead_letters(self, hook: Webhook, ids: list[int] | None, request: str) -> Replay:
        replay, counts = await self._new(hook, "dead_letters", request)
        self._spawn(replay, hook, counts, self._run_dead_letters(hook, ids, counts))
        return replay

    async def cancel(self, hook_id: str | None = None) -> None:
        """Stop the replays of ``hook_id`` (all of them when None)."""
        tasks = [t for h, t in self._tasks.values() if hook_id is None or h.id == hook_id]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _new(self, hook: Webhook, kind: str, request: str) -> tuple[Replay, Counts]:
        store, now = self.deps.store, self.deps.clock()
        replay = Replay(
            str(uuid.uuid4()),
            hook.tenant,
            hook.id,
            kind,
            request,
            "running",
            0,
            0,
            0,
            "",
            now,
            None,
        )
        await store.run(store.db.prune_replays, KEEP)
        await store.run(store.db.replay_insert, replay)
        return replay, Counts()

    def _spawn(
        self, replay: Replay, hook: Webhook, counts: Counts, job: Coroutine[Any, Any, str]
    ) -> None:
        self.live[replay.id] = counts
        task = asyncio.get_running_loop().create_task(self._supervise(replay, counts, job))
        self._tasks[replay.id] = (hook, task)
        task.add_done_callback(lambda _: self._tasks.pop(replay.id, None))

    async def _supervise(
        self, replay: Replay, counts: Counts, job: Coroutine[Any, Any, str]
    ) -> None:
        status, error = "done", ""
        try:
            error = await job
            status = "failed" if error else "done"
        except asyncio.CancelledError:
            status, error = "interrupted", "the replay was stopped"
            raise
        except Exception as exc:
            log.exception("replay failed", extra={"replay": replay.id})
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            store = self.deps.store
            args = (replay.id, counts.tuple(), status, error, self.deps.clock())
            await asyncio.shield(store.run(store.db.replay_progress, *args))
            self.live.pop(replay.id, None)

    async def _run_window(self, hook: Webhook, w: Window, counts: Counts, began: float) -> str:
        types = w.types if w.types is not None else hook.events
        cfg = self.deps.cfg
        windows = self.source().window(hook.tenant, w.start, w.end, types, w.categories)
        async for chunk in windows:
            items = [(0, e) for e in chunk]
            for batch in batching.split(items, cfg.batch_events, cfg.batch_bytes):
                error = await self._post(hook, batching.body(batch), began)
                if error:
                    counts.failed += len(batch)
                    return error
                counts.events += len(batch)
                counts.batches += 1
                self.deps.metrics.of(hook.id).replayed_events += len(batch)
        return ""

    async def _run_dead_letters(self, hook: Webhook, ids: list[int] | None, counts: Counts) -> str:
        """Each dead letter posted once; removed when acknowledged, kept when not."""
        store, kept = self.deps.store, 0
        while True:
            letters: list[DeadLetter] = await store.run(
                store.db.dead_letters, hook.tenant, hook.id, 100, kept, ids
            )
            if not letters:
                return ""
            for letter in letters:
                posted = await self.deps.poster.post(hook.url, letter.body, signer_for(hook))
                if not posted.ok:
                    counts.failed += letter.count
                    kept += 1
                    continue
                await store.run(store.db.dead_letter_replayed, letter, self.deps.clock())
                counts.events += letter.count
                counts.batches += 1
                self.deps.metrics.of(hook.id).replayed_events += letter.count

    async def _post(self, hook: Webhook, body: bytes, began: float) -> str:
        """Post with retries; "" once acknowledged, else why it gave up."""
        deps, cfg = self.deps, self.deps.cfg
        attempts = 0
        while True:
            posted = await deps.poster.post(hook.url, body, signer_for(hook))
            if posted.ok:
                return ""
            attempts += 1
            deps.metrics.of(hook.id).failures += 1
            now = deps.clock()
            at = next_attempt_at(
                now, attempts, began, cfg.max_age, cfg.retry_min, cfg.retry_max, deps.rand
            )
            if at is None:
                return posted.reason
            await asyncio.sleep(max(0.0, at - now))


@dataclass
class Counts:
    events: int = 0
    batches: int = 0
    failed: int = 0

    def tuple(self) -> tuple[int, int, int]:
        return self.events, self.batches, self.failed
