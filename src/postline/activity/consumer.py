"""The ``activity`` consumer: every event of the log into the activity store.

Its offset lives in the store (written with the rows), so ``resume`` returns it and a
crash between the store's commit and the log's commit replays nothing. Events at or
below the highest offset already handed to the store (a log that hands a batch twice)
are skipped and counted.

Pipelined: ``handle`` builds the batch's Arrow table while the previous batch's insert
runs on the store's thread (DuckDB releases the GIL), then queues this batch's insert.
It waits for that insert before returning (durable on return, the runner's contract)
unless ``early_ack`` allows returning at once, so the runner reads the next batch from
the log while DuckDB loads this one. That is safe only while the log still holds the
batch: the runner commits the batch's offset to the log on return, and log retention
then may prune it, but only events older than ``events.retention`` (retention.py). So a
batch is acknowledged early only if its oldest event is younger than ``early_ack``
seconds (the component passes the log's retention minus a wide margin): a crash before
the insert commits then finds the batch still in the log, and ``resume`` (the store's
own offset) makes the runner read it again. A queued insert that fails is retried at
the next ``handle`` before anything newer is queued (``handle`` raises if it fails
again, and the runner retries); ``flush`` waits for it (the component calls it before
closing the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import pyarrow as pa

from postline.activity.rows import batch_table
from postline.activity.store import ActivityStore
from postline.events.consumer import Batch

NAME = "activity"
log = logging.getLogger("postline.activity")


class ActivityConsumer:
    name = NAME

    def __init__(
        self,
        store: ActivityStore,
        *,
        early_ack: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.early_ack = early_ack  # seconds; 0: every batch is stored before handle returns
        self.clock = clock
        self.duplicates = 0  # events handed again at or below the stored offset
        self.early_acks = 0  # batches acknowledged while their insert was still queued
        self.retries = 0  # queued inserts that failed and were retried
        self._queued: int | None = None  # the last offset handed to the store
        self._pending: asyncio.Task[None] | None = None
        self._held: tuple[pa.Table, int] | None = None  # the pending insert's arguments

    async def resume(self) -> int | None:
        # A batch still queued from before is dropped: the runner reads again from the
        # store's own offset, which is all that counts.
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._pending)
            self._pending = self._held = None
        self._queued = await self.store.offset()
        return self._queued

    async def handle(self, events: Batch) -> None:
        if self._queued is None:
            self._queued = await self.store.offset()
        fresh = [e for e in events if e[0] > self._queued]
        self.duplicates += len(events) - len(fresh)
        if not fresh:
            return
        table = batch_table(fresh)  # while the previous insert runs
        await self.flush()
        last = fresh[-1][0]
        self._held = (table, last)
        self._pending = asyncio.ensure_future(self.store.ingest(table, last))
        self._queued = last
        if self.early_ack > 0 and self.clock() - min(r.ts for _, r in fresh) < self.early_ack:
            self.early_acks += 1
            return
        await self.flush()

    async def flush(self) -> None:
        """Wait until the queued insert (if any) is committed; retry it once if it failed
        (raises if the retry fails too: it stays queued for the next call)."""
        task, held = self._pending, self._held
        if task is None or held is None:
            return
        try:
            await asyncio.shield(task)
        except Exception:
            table, last = held
            self.retries += 1
            log.exception("activity insert failed; retrying")
            if await self.store.offset() < last:  # not committed (a failed COMMIT may be)
                await self.store.ingest(table, last)
        self._pending = self._held = None
