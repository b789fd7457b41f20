"""The webhooks component of the event pipeline (events/pipeline.py).

It opens ``<data_dir>/webhooks.db`` (store.py), one aiohttp session for every post
(poster.py), starts a dispatcher per enabled webhook (dispatcher.py), serves the webhook
API (api.py) and runs replays (replay.py). In cluster mode the store is PostgreSQL's,
shared by the nodes (pg_store.py), and each webhook has one dispatcher in the whole
cluster, on the node holding its lock (pg_service.py). Closing stops replays and
dispatchers, then the session, then the store.
"""

from __future__ import annotations

import socket
from typing import cast

from postline.api.app import App
from postline.api.prometheus import Family
from postline.events.pipeline import Component, PipelineContext, ReplaySource
from postline.webhooks import api
from postline.webhooks.dispatcher import Deps
from postline.webhooks.metrics import WebhookMetrics
from postline.webhooks.poster import Poster
from postline.webhooks.replay import LogReplaySource, Replays
from postline.webhooks.service import WebhookService
from postline.webhooks.store import WebhookStore


class WebhooksComponent:
    name = "webhooks"

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx
        self.metrics = WebhookMetrics()
        self.poster = Poster(ctx.cfg.webhooks, ctx.cfg.dns, ctx.clock)
        self.service: WebhookService | None = None
        self._log_source = LogReplaySource(ctx.events)

    def _source(self) -> ReplaySource:
        """The activity store when it runs (it keeps events longer), else the log."""
        return self.ctx.replay_source or self._log_source

    async def start(self) -> None:
        ctx = self.ctx
        cluster = ctx.cfg.cluster
        if ctx.cfg.clustered and cluster is not None:
            self.service = await self._cluster_service(cluster.postgres, cluster.datacenter)
        else:
            store = await WebhookStore.open(ctx.data_dir)
            deps = Deps(ctx.cfg.webhooks, store, self.poster, ctx.events, self.metrics, ctx.clock)
            self.service = WebhookService(deps, ctx.runners, Replays(deps, self._source))
        await self.service.start()

    async def _cluster_service(self, dsn: str, datacenter: str) -> WebhookService:
        """Shared by every node in PostgreSQL (pg_store.py), one dispatcher per webhook in
        the cluster (pg_service.py); the other modules use the store as webhooks.db's."""
        from postline.cluster.origins import Origins
        from postline.webhooks.pg_service import ClusterWebhookService
        from postline.webhooks.pg_store import PgWebhookStore

        ctx = self.ctx
        node = f"{socket.gethostname()}:{ctx.data_dir.resolve()}"
        pg = await PgWebhookStore.open(dsn, datacenter, node)
        store = cast(WebhookStore, pg)  # the same calls, awaited (pg_store.py)
        deps = Deps(ctx.cfg.webhooks, store, self.poster, ctx.events, self.metrics, ctx.clock)
        deps.origins = Origins(pg.db.pool.fetch)  # events other datacenters post themselves
        service = ClusterWebhookService(deps, ctx.runners, Replays(deps, self._source), pg.db)
        service.adopted = bool(ctx.extras.get("adopted"))
        return service

    def routes(self, app: App) -> None:
        assert self.service is not None, "start() first"
        api.register(app, self.service)

    def families(self) -> list[Family]:
        return self.metrics.families()

    async def close(self) -> None:
        if self.service is None:
            return
        await self.service.close()
        await self.poster.close()
        await self.service.deps.store.close()
        self.service = None


def component(ctx: PipelineContext) -> Component | None:
    return WebhooksComponent(ctx)
