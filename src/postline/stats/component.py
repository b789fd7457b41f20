"""The stats component of the event pipeline (events/pipeline.py): the ``stats`` consumer
keeping rollups in ``<data_dir>/stats.db`` (in cluster mode in PostgreSQL, shared by the
nodes: pg_store.py) and the /v3/stats, /v3/categories/stats(/sums)
routes reading them. Off when ``[stats] enabled = false``."""

from __future__ import annotations

from typing import cast

from postline.api.app import App
from postline.api.prometheus import Family
from postline.events.pipeline import Component, PipelineContext
from postline.stats import api
from postline.stats.consumer import StatsConsumer
from postline.stats.store import StatsStore


class StatsComponent:
    name = "stats"

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx
        self.store: StatsStore | None = None
        self.consumer: StatsConsumer | None = None

    async def start(self) -> None:
        cluster = self.ctx.cfg.cluster
        if self.ctx.cfg.clustered and cluster is not None:
            # Shared by every node (stats/pg_store.py), with StatsStore's calls: the API
            # and the consumer use it as they use the SQLite store.
            from postline.stats.pg_store import PgStatsStore

            pg = await PgStatsStore.open(cluster.postgres, cluster.datacenter)
            self.store = cast(StatsStore, pg)
        else:
            self.ctx.data_dir.mkdir(parents=True, exist_ok=True)
            self.store = await StatsStore.open(self.ctx.data_dir)
        self.consumer = StatsConsumer(self.store)
        self.ctx.runners.add(self.consumer, poll=float(self.ctx.cfg.events.poll))

    def routes(self, app: App) -> None:
        if self.store is not None:
            api.register(app, self.store, self.ctx.clock)

    def families(self) -> list[Family]:
        store, consumer = self.store, self.consumer
        if store is None or consumer is None:
            return []
        return [
            Family.one(
                "stats_rollup_rows_total",
                "counter",
                "Rollup counters upserted into stats.db (one per tenant, day, category"
                " and metric of a batch) since the node started.",
                store.rows_written,
            ),
            Family.one(
                "stats_events_total",
                "counter",
                "Events the stats consumer read since the node started.",
                consumer.events,
            ),
            Family.one(
                "stats_events_counted_total",
                "counter",
                "Events that added to a statistics metric since the node started.",
                consumer.counted,
            ),
        ]

    async def close(self) -> None:
        # The pipeline stops every runner before it closes the components.
        if self.store is not None:
            await self.store.close()
            self.store = None


def component(ctx: PipelineContext) -> Component | None:
    if not ctx.cfg.stats.enabled:
        return None
    return StatsComponent(ctx)
