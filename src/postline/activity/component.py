"""The activity component of the event pipeline (events/pipeline.py): the ``activity``
consumer filling ``<data_dir>/activity.duckdb``, the /v3/messages routes reading it, the
replay source over it, and retention (rows older than ``activity.retention`` deleted,
checked every tenth of it, at most every minute). Off when ``[activity] enabled = false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from postline.activity import api
from postline.activity.consumer import ActivityConsumer
from postline.activity.replay import StoreReplaySource
from postline.activity.store import ActivityStore
from postline.api.app import App
from postline.api.prometheus import Family
from postline.config import EventsConfig
from postline.events.pipeline import Component, PipelineContext

log = logging.getLogger("postline.activity")
BATCH = 20_000  # events a consumer read takes: larger inserts load DuckDB faster
# A batch younger than the log's retention minus this may be acknowledged while its insert
# is queued (consumer.py): the log keeps it far longer than the insert can take.
EARLY_ACK_MARGIN = 3600.0
RETENTION_EVERY_MAX = 60.0


class Prunable(Protocol):
    async def prune(self, before: float) -> int: ...


async def retain(store: Prunable, ctx: PipelineContext) -> None:
    """Remove activity older than ``activity.retention``, every tenth of it (a minute at
    most), for ever: DuckDB's store and PostgreSQL's (pg_component.py) alike."""
    keep = float(ctx.cfg.activity.retention)
    every = min(keep / 10, RETENTION_EVERY_MAX)
    while True:
        try:
            await store.prune(ctx.clock() - keep)
        except Exception:
            log.exception("activity retention failed; retrying")
        await asyncio.sleep(every)


def early_ack_seconds(events: EventsConfig) -> float:
    """How young a batch must be to be acknowledged with its insert queued (consumer.py)."""
    return max(0.0, float(events.retention) - EARLY_ACK_MARGIN)


class ActivityComponent:
    name = "activity"

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx
        self.store: ActivityStore | None = None
        self.consumer: ActivityConsumer | None = None
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.ctx.cfg.activity
        self.ctx.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await ActivityStore.open(self.ctx.data_dir, cfg.memory_limit)
        early_ack = early_ack_seconds(self.ctx.cfg.events)
        self.consumer = ActivityConsumer(self.store, early_ack=early_ack, clock=self.ctx.clock)
        self.ctx.runners.add(self.consumer, batch=BATCH, poll=float(self.ctx.cfg.events.poll))
        self.ctx.replay_source = StoreReplaySource(self.store)
        self._retention = asyncio.get_running_loop().create_task(retain(self.store, self.ctx))

    def routes(self, app: App) -> None:
        if self.store is not None:
            api.register(app, self.store)

    def families(self) -> list[Family]:
        store, consumer = self.store, self.consumer
        if store is None or consumer is None:
            return []
        return [
            Family.one(
                "activity_rows_stored_total",
                "counter",
                "Event rows inserted into activity.duckdb since the node started.",
                store.rows_stored,
            ),
            Family.one(
                "activity_ingest_batches_total",
                "counter",
                "Ingest transactions (rows and offset together) since the node started.",
                store.batches,
            ),
            Family.one(
                "activity_rows",
                "gauge",
                "Event rows in activity.duckdb (searchable).",
                store.row_count,
            ),
            Family.one(
                "activity_rows_pruned_total",
                "counter",
                "Rows deleted by activity.retention since the node started.",
                store.rows_pruned,
            ),
            Family.one(
                "activity_duplicates_total",
                "counter",
                "Events handed again at or below the stored offset, skipped.",
                consumer.duplicates,
            ),
            Family.one(
                "activity_store_bytes",
                "gauge",
                "Size of activity.duckdb and its WAL on disk.",
                store.disk_bytes(),
            ),
        ]

    async def close(self) -> None:
        # The pipeline stops every runner before it closes the components.
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        if self.ctx.replay_source is not None:
            self.ctx.replay_source = None
        if self.consumer is not None:
            try:
                await self.consumer.flush()  # the last batch acknowledged early
            except Exception:  # the store's offset says what is stored: read again at start
                log.exception("activity: the last queued insert failed at close")
        if self.store is not None:
            await self.store.close()
            self.store = None


def component(ctx: PipelineContext) -> Component | None:
    if not ctx.cfg.activity.enabled:
        return None
    if ctx.cfg.clustered:  # the shared PostgreSQL store instead of a DuckDB file per node
        from postline.activity.pg_component import PgActivityComponent

        return PgActivityComponent(ctx)
    return ActivityComponent(ctx)
