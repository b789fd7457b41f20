"""The dispatcher of one webhook: a Consumer of the event log (events/consumer.py).

Strategies:

* **One consumer per enabled webhook** (``webhook:<id>``), each its own runner task with
  its own offset: a receiver that is down or stalled holds back only its own webhook.
* **Filter, then batch**: of each batch the runner reads, keep the webhook's tenant's
  events of its enabled types (offsets at or below what was already handled are skipped:
  the fill below reads ahead of the runner). Batches (batching.py) of ``batch_events``
  and ``batch_bytes``.
* **Fill under light load**: when fewer than ``batch_events`` events are at hand, read on
  until the oldest of them is ``batch_wait`` old, so a trickle of events becomes a few
  posts rather than one per event; the added delay is at most ``batch_wait``.
* **Retry in order**: a batch is retried (schedule/backoff.py: doubling from
  ``retry_min`` to ``retry_max`` with jitter) until it is acknowledged, and the next batch
  waits for it, so events arrive in log order. ``max_age`` after its oldest event, a batch
  still failing goes to the dead-letter store with its ledger row in one transaction and
  the dispatcher moves on.
* **Durable progress**: the ledger in webhooks.db is written after each acknowledged
  batch, so ``resume`` continues after the newest posted range even when the log offset
  commit was lost (at-least-once: a batch posted but not yet recorded is posted again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postline.config import WebhooksConfig
from postline.events.consumer import Batch
from postline.events.log import EventLog
from postline.schedule.backoff import next_attempt_at
from postline.webhooks import batching
from postline.webhooks.batching import Item
from postline.webhooks.metrics import WebhookMetrics
from postline.webhooks.poster import Poster
from postline.webhooks.settings import Webhook
from postline.webhooks.signing import Signer
from postline.webhooks.store import WebhookStore

if TYPE_CHECKING:
    from postline.cluster.origins import Origins

log = logging.getLogger("postline.webhooks")

FILL_POLL = 0.05  # seconds between reads while a batch fills


def consumer_name(hook_id: str) -> str:
    return f"webhook:{hook_id}"


def signer_for(hook: Webhook) -> Signer | None:
    return Signer(hook.private_key) if hook.signed and hook.private_key else None


@dataclass
class Deps:
    """What every dispatcher of a node shares."""

    cfg: WebhooksConfig
    store: WebhookStore
    poster: Poster
    events: EventLog
    metrics: WebhookMetrics
    clock: Callable[[], float] = time.time
    rand: random.Random = field(default_factory=random.Random)
    # Cluster mode: events imported from a datacenter that posts them itself from this
    # same database are not this dispatcher's (cluster/origins.py).
    origins: Origins | None = None


class WebhookConsumer:
    def __init__(self, hook: Webhook, deps: Deps) -> None:
        self.name = consumer_name(hook.id)
        self.hook = hook
        self.deps = deps
        self._signer = signer_for(hook)
        self._done = 0  # events at or below this offset are handled
        self._task: asyncio.Task[object] | None = None
        self._stopped = False

    def update(self, hook: Webhook) -> None:
        """New settings (PATCH): the next post uses them."""
        self.hook = hook
        self._signer = signer_for(hook)

    def interrupt(self) -> None:
        """Stop now, even inside a post or a retry wait (the runner's stop waits for
        ``handle`` to return, which a dead receiver would delay by up to ``retry_max``)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def resume(self) -> int | None:
        store = self.deps.store
        own: int | None = await store.run(store.db.resume_offset, self.hook.id)
        if own is None:  # nothing posted from this log yet (cluster mode: pg_store.py)
            own = await self._start_offset()
        committed = await self.deps.events.committed(self.name)
        self._done = max(own, committed)
        return self._done

    async def _start_offset(self) -> int:
        """Where a webhook with nothing posted from this log starts: its events stored
        since it was made (a new webhook gets no history). A log that can say where a
        time begins is asked (JetStream: the webhook may have been made in another
        datacenter, whose log's head ``start_offset`` is); else ``start_offset``."""
        offset_at = getattr(self.deps.events, "offset_at", None)
        if offset_at is None or not self.hook.created:
            return self.hook.start_offset
        at: int = await offset_at(self.hook.created)
        return at

    async def handle(self, events: Batch) -> None:
        if self._stopped:
            raise asyncio.CancelledError
        self._task = asyncio.current_task()
        try:
            last = events[-1][0]
            mine = await self._mine(events)
            if mine and len(mine) < self.deps.cfg.batch_events:
                last = await self._fill(mine, last)
            cfg = self.deps.cfg
            for batch in batching.split(mine, cfg.batch_events, cfg.batch_bytes):
                await self._deliver(batch)
            self._done = max(self._done, last)
        finally:
            self._task = None

    async def _mine(self, events: Batch) -> list[Item]:
        tenant, kinds, done = self.hook.tenant, self.hook.events, self._done
        mine = [(o, e) for o, e in events if o > done and e.tenant == tenant and e.event in kinds]
        origins = self.deps.origins
        if origins is not None and mine:
            mine = await origins.keep(mine)
        return mine

    async def _fill(self, mine: list[Item], last: int) -> int:
        """Read on (appending to ``mine``) until the batch is full or its oldest event is
        ``batch_wait`` old; the newest offset read."""
        cfg, deps = self.deps.cfg, self.deps
        deadline = mine[0][1].ts + float(cfg.batch_wait)
        while len(mine) < cfg.batch_events and batching.size_of(mine) < cfg.batch_bytes:
            wait = deadline - deps.clock()
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, FILL_POLL))
            more = await deps.events.read(last, cfg.batch_events)
            if more:
                last = more[-1][0]
                mine += await self._mine(more)
        return last

    async def _deliver(self, batch: list[Item]) -> None:
        deps, cfg = self.deps, self.deps.cfg
        body = batching.body(batch)
        first, last, count = batch[0][0], batch[-1][0], len(batch)
        oldest = min(e.ts for _, e in batch)
        counters = deps.metrics.of(self.hook.id)
        attempts = 0
        while True:
            posted = await deps.poster.post(self.hook.url, body, self._signer)
            now = deps.clock()
            if posted.ok:
                counters.posted_events += count
                counters.posted_batches += 1
                await deps.store.run(deps.store.db.delivered, self.hook.id, first, last, count, now)
                return
            attempts += 1
            counters.failures += 1
            if attempts == 1:
                log.warning("webhook post failed; retrying: %s", posted.reason, extra=self._extra())
            at = next_attempt_at(
                now, attempts, oldest, cfg.max_age, cfg.retry_min, cfg.retry_max, deps.rand
            )
            if at is None:
                break
            await asyncio.sleep(max(0.0, at - now))
        reason = posted.reason
        await deps.store.run(deps.store.db.dead, self.hook, first, last, count, body, reason, now)
        counters.dead_events += count
        counters.dead_batches += 1
        log.error("webhook batch dead-lettered after max_age: %s", reason, extra=self._extra(count))

    def _extra(self, count: int = 0) -> dict[str, object]:
        return {"webhook": self.hook.id, "url": self.hook.url, "events": count}
