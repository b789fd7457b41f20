"""Webhook settings changes and the dispatchers they start and stop.

Every call names the tenant, and a webhook of another tenant is simply not found. Creating
or enabling a webhook adds its dispatcher to the node's runners; disabling or deleting it
interrupts the dispatcher (even in the middle of a retry wait) and removes it; any other
change is handed to the running dispatcher, which uses it from its next post. Changes are
serialised by one lock, so the per-tenant limit and URL uniqueness hold under races.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from postline.api.errors import HttpError, http_error
from postline.events.consumer import RunnerSet
from postline.model.errors import FieldError
from postline.webhooks.addresses import UrlRefused, check_url
from postline.webhooks.dispatcher import Deps, WebhookConsumer, consumer_name
from postline.webhooks.replay import Replays
from postline.webhooks.settings import Webhook, WebhookRequest, apply, check_request, new_webhook
from postline.webhooks.signing import new_private_key, public_key_b64

INVALID_ID = "Invalid id provided."  # the OpenAPI's 404 message
TOO_MANY = "You have reached the maximum number of webhooks per your current billing plan."
RUNNER_POLL = 0.1  # seconds between the runner's reads when caught up
WATCH = 0.25  # seconds between checks that every dispatcher is still wanted


def not_found() -> HttpError:
    return http_error(404, INVALID_ID)


class WebhookService:
    def __init__(self, deps: Deps, runners: RunnerSet, replays: Replays) -> None:
        self.deps = deps
        self.runners = runners
        self.replays = replays
        self.consumers: dict[str, WebhookConsumer] = {}
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        db = self.deps.store.db
        await self.deps.store.run(db.interrupt_replays, self.deps.clock())
        for hook in await self.deps.store.run(db.enabled):
            self._start(hook)
        self._watch = asyncio.get_running_loop().create_task(self._watch_runners())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])
        await self.replays.cancel()
        for hook_id in list(self.consumers):
            await self._stop(hook_id)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, tenant: str, hook_id: str) -> Webhook:
        hook = await self.deps.store.run(self.deps.store.db.get, tenant, hook_id)
        if hook is None:
            raise not_found()
        return hook

    async def all(self, tenant: str) -> list[Webhook]:
        return await self.deps.store.run(self.deps.store.db.tenant_hooks, tenant)

    async def first(self, tenant: str) -> Webhook | None:
        hooks = await self.all(tenant)
        return hooks[0] if hooks else None

    # -- changes --------------------------------------------------------------------------

    async def create(self, tenant: str, req: WebhookRequest) -> Webhook:
        _raise(check_request(req, creating=True))
        assert req.url is not None
        await self.check_url(req.url)
        async with self._lock:
            hooks = await self.all(tenant)
            if len(hooks) >= self.deps.cfg.max_webhooks:
                raise http_error(400, TOO_MANY)
            _unique(hooks, req.url, None)
            head = await self.deps.events.head()
            hook = new_webhook(str(uuid.uuid4()), tenant, req, head, self.deps.clock())
            await self.deps.store.run(self.deps.store.db.insert, hook)
            if hook.enabled:
                self._start(hook)
        return hook

    async def update(self, tenant: str, hook_id: str, req: WebhookRequest) -> Webhook:
        _raise(check_request(req, creating=False))
        if req.url is not None:
            await self.check_url(req.url)
        async with self._lock:
            hook = await self.get(tenant, hook_id)
            if req.url is not None:
                _unique(await self.all(tenant), req.url, hook.id)
            return await self._save(apply(hook, req, self.deps.clock()))

    async def set_signed(self, tenant: str, hook_id: str, enabled: bool) -> Webhook:
        async with self._lock:
            hook = await self.get(tenant, hook_id)
            key = hook.private_key
            if enabled and key is None:  # made once; kept when signing is switched off
                key = new_private_key()
            public = public_key_b64(key) if key is not None else ""
            now = self.deps.clock()
            changed = replace(hook, signed=enabled, private_key=key, public_key=public, updated=now)
            return await self._save(changed)

    async def delete(self, tenant: str, hook_id: str) -> None:
        async with self._lock:
            hook = await self.get(tenant, hook_id)
            await self._stop(hook.id)
            await self.replays.cancel(hook.id)
            await self.deps.store.run(self.deps.store.db.delete, hook.id)

    async def _save(self, hook: Webhook) -> Webhook:
        await self.deps.store.run(self.deps.store.db.update, hook)
        running = self.consumers.get(hook.id)
        if hook.enabled and running is None:
            self._start(hook)
        elif not hook.enabled and running is not None:
            await self._stop(hook.id)
        elif running is not None:
            running.update(hook)
        return hook

    async def check_url(self, url: str) -> None:
        try:
            host = check_url(url)
            await self.deps.poster.resolver.check_host(host)
        except UrlRefused as exc:
            raise http_error(400, str(exc), "url") from None

    # -- dispatchers ----------------------------------------------------------------------

    def _start(self, hook: Webhook) -> None:
        consumer = WebhookConsumer(hook, self.deps)
        self.consumers[hook.id] = consumer
        batch = max(self.deps.cfg.batch_events, 1000)
        self.runners.add(consumer, batch=batch, poll=RUNNER_POLL)

    async def _stop(self, hook_id: str) -> None:
        consumer = self.consumers.pop(hook_id, None)
        if consumer is not None:
            consumer.interrupt()
            await self.runners.remove(consumer.name)

    async def _watch_runners(self) -> None:
        """Interrupt a dispatcher whose runner was removed by someone else (the pipeline
        stopping every runner before closing the components): the runner's stop waits for
        ``handle``, which may be sleeping between retries to a dead receiver."""
        while True:
            await asyncio.sleep(WATCH)
            for hook_id, consumer in self.consumers.items():
                if self.runners.get(consumer_name(hook_id)) is None:
                    consumer.interrupt()


def _raise(error: FieldError | None) -> None:
    if error is not None:
        raise HttpError(400, [error])


def _unique(hooks: list[Webhook], url: str, own_id: str | None) -> None:
    for hook in hooks:
        if hook.url == url and hook.id != own_id:
            message = f"Webhook at '{url}' already exists. Please provide a unique URL."
            raise http_error(400, message, "url")
