"""The activity component in cluster mode: the store is PostgreSQL's, shared by every
node (pg_store.py), instead of a DuckDB file per node. Each node's pipeline worker runs
the ``activity`` consumer over the whole shared event log; the nodes take turns on the
shared offset row, so each event is stored once whichever node got there first. The
/v3/messages routes (pg_api.py) and the webhook replay source (pg_replay.py) read the
shared tables, and retention drops day partitions older than ``activity.retention`` and
the message rows whose last event was in one.
The metrics keep the embedded component's names; their counters are this node's work.

The shared offset is one per datacenter's event log ("activity/<datacenter>"). Every
datacenter's log also holds the other datacenters' events (cluster/imports.py); in a
PostgreSQL database shared by several datacenters each stores its own events and skips
the ones imported from the others (cluster/origins.py), so each event is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postline.activity import pg_api
from postline.activity.component import retain
from postline.activity.pg_replay import PgReplaySource
from postline.activity.pg_store import NAME, PgActivityStore
from postline.api.app import App
from postline.api.prometheus import Family
from postline.events.consumer import Batch
from postline.events.pipeline import PipelineContext

log = logging.getLogger("postline.activity")
BATCH = 20_000  # events a read takes: one COPY each


class PgActivityConsumer:
    """Hands each batch to the store, which stores what no node stored yet."""

    name = NAME

    def __init__(self, store: PgActivityStore) -> None:
        self.store = store

    async def resume(self) -> int | None:
        return await self.store.offset()

    async def handle(self, events: Batch) -> None:
        await self.store.ingest(events)


class PgActivityComponent:
    name = "activity"

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx
        self.store: PgActivityStore | None = None
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cluster = self.ctx.cfg.cluster
        assert cluster is not None  # chosen only in cluster mode (component.py)
        self.store = await PgActivityStore.open(
            cluster.postgres, f"{NAME}/{cluster.datacenter}", self.ctx.clock
        )
        consumer = PgActivityConsumer(self.store)
        self.ctx.runners.add(consumer, batch=BATCH, poll=float(self.ctx.cfg.events.poll))
        self.ctx.replay_source = PgReplaySource(self.store)
        self._retention = asyncio.get_running_loop().create_task(retain(self.store, self.ctx))

    def routes(self, app: App) -> None:
        if self.store is not None:
            pg_api.register(app, self.store)

    def families(self) -> list[Family]:
        store = self.store
        if store is None:
            return []
        return [
            Family.one(
                "activity_rows_stored_total",
                "counter",
                "Event rows this node inserted into the shared PostgreSQL activity store.",
                store.rows_stored,
            ),
            Family.one(
                "activity_ingest_batches_total",
                "counter",
                "Ingest transactions (rows and offset together) of this node.",
                store.batches,
            ),
            Family.one(
                "activity_rows",
                "gauge",
                "Event rows in the shared activity store (estimated at start).",
                store.row_count,
            ),
            Family.one(
                "activity_rows_pruned_total",
                "counter",
                "Rows in day partitions this node dropped for activity.retention.",
                store.rows_pruned,
            ),
            Family.one(
                "activity_messages_pruned_total",
                "counter",
                "Message rows this node deleted for activity.retention (their last day dropped).",
                store.messages_pruned,
            ),
            Family.one(
                "activity_duplicates_total",
                "counter",
                "Events read that another node (or an earlier try) had stored, skipped.",
                store.duplicates,
            ),
            Family.one(
                "activity_store_bytes",
                "gauge",
                "Size of the activity partitions, message rows and indexes in PostgreSQL.",
                store.disk_bytes(),
            ),
        ]

    async def close(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        self.ctx.replay_source = None
        if self.store is not None:
            await self.store.close()
            self.store = None
