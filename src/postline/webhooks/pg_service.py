"""The webhook service in cluster mode: settings shared in PostgreSQL, one dispatcher per
webhook in the whole cluster.

Why an advisory lock per webhook rather than turns on a row (as the activity and stats
stores take): a webhook's dispatcher holds its batch for as long as the receiver keeps
failing (retries up to ``max_age``, hours), and the next batch must wait for it, so a
turn would have to span the whole retry loop, far beyond what a transaction may stay
open. Instead each node keeps one ownership session (pg_store.PgWebhookDb.check_owner)
and dispatches exactly the webhooks whose session lock it holds. Every ``OWN_EVERY``
seconds (and at once after this node's API created or enabled one) it reconciles:

* it checks the session answers; when it does not, its locks are gone (another node may
  take them at once), so it stops every dispatcher it runs and opens a new session;
* it stops the dispatchers of webhooks disabled or deleted (through any node's API) and
  releases their locks, and hands changed settings to the dispatchers it keeps (the
  next post uses them: URL, signing key, event types);
* it tries the lock of every enabled webhook it does not dispatch, and starts a
  dispatcher for each it gets.

A node that dies (kill -9, lost machine) ends its session; PostgreSQL releases its locks
and another node takes each webhook within ``OWN_EVERY``, resuming after the newest range
in the shared ledger (or the shared committed offset, whichever is further). At most the
batch in flight when the node died is posted again; nothing is skipped, since a dispatcher
only moves past events it posted or dead-lettered. The webhooks spread over the nodes
(whoever took a lock first keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postline.events.consumer import RunnerSet
from postline.tasks import cancel_and_wait
from postline.webhooks.dispatcher import Deps
from postline.webhooks.pg_store import OwnershipLost, PgWebhookDb
from postline.webhooks.replay import Replays
from postline.webhooks.service import WebhookService
from postline.webhooks.settings import Webhook, WebhookRequest

log = logging.getLogger("postline.webhooks")

OWN_EVERY = 0.5  # seconds between reconciliations (the takeover delay after a node dies)


class ClusterWebhookService(WebhookService):
    def __init__(self, deps: Deps, runners: RunnerSet, replays: Replays, db: PgWebhookDb):
        super().__init__(deps, runners, replays)
        self.db = db
        self._wake = asyncio.Event()
        self._owning: asyncio.Task[None] | None = None
        # dispatching a lost datacenter's log from its mirror here (cluster/adopted.py)
        self.adopted = False

    async def start(self) -> None:
        if not self.adopted:  # an adopted log's service runs no replays of its own
            await self.db.interrupt_replays(self.deps.clock())
        loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watch_runners())
        await self._reconcile_logged()  # the webhooks nobody holds start here at once
        self._owning = loop.create_task(self._own())

    async def close(self) -> None:
        if self._owning is not None:
            await cancel_and_wait(self._owning)
            self._owning = None
        await super().close()

    # -- settings changes, serialised across the nodes per tenant -------------------------

    async def create(self, tenant: str, req: WebhookRequest) -> Webhook:
        async with self.db.tenant_lock(tenant):
            return await super().create(tenant, req)

    async def update(self, tenant: str, hook_id: str, req: WebhookRequest) -> Webhook:
        async with self.db.tenant_lock(tenant):
            return await super().update(tenant, hook_id, req)

    # -- WebhookService's dispatcher calls, made cluster-wide -----------------------------

    def _start(self, hook: Webhook) -> None:
        """Created or enabled through this node: run it if this node gets its lock."""
        self._wake.set()

    async def _stop(self, hook_id: str) -> None:
        if hook_id in self.consumers:
            await super()._stop(hook_id)
            await self.db.release(hook_id)

    # -- ownership ------------------------------------------------------------------------

    async def _own(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), OWN_EVERY)
            self._wake.clear()
            await self._reconcile_logged()

    async def _reconcile_logged(self) -> None:
        try:
            await self.reconcile()
        except OwnershipLost as exc:
            log.warning("webhook ownership session lost (%s); stopping dispatchers", exc)
            for hook_id in list(self.consumers):
                await WebhookService._stop(self, hook_id)  # the locks went with the session
        except Exception:
            log.exception("webhook ownership: reconciling failed; retrying")

    async def reconcile(self) -> None:
        """One pass: see the module docstring."""
        await self.db.check_owner()
        hooks = {h.id: h for h in await self.db.enabled()}
        async with self._lock:  # not beside a settings change of this node's API
            for hook_id, consumer in list(self.consumers.items()):
                hook = hooks.get(hook_id)
                if hook is None:
                    await self._stop(hook_id)
                elif hook != consumer.hook:
                    consumer.update(hook)
            wanted = [hook_id for hook_id in hooks if hook_id not in self.consumers]
            if wanted:
                for hook_id in await self.db.try_own(wanted):
                    super()._start(hooks[hook_id])
                    log.info("dispatching webhook %s from this node", hook_id)
