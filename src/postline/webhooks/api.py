"""The event webhook API, as SendGrid's OpenAPI describes it (tsg_webhooks_v3.json), and
Postline's dead-letter and replay endpoints.

  POST   /v3/user/webhooks/event/settings              EventWebhookRequest → 201 (with id)
  GET    /v3/user/webhooks/event/settings/all          → {max_allowed, webhooks: [...]}
  GET    /v3/user/webhooks/event/settings/{id}         → the webhook (404 "Invalid id provided.")
  PATCH  /v3/user/webhooks/event/settings/{id}         → the webhook
  DELETE /v3/user/webhooks/event/settings/{id}         → 204
  GET    /v3/user/webhooks/event/settings/signed/{id}  → {id, public_key}
  PATCH  /v3/user/webhooks/event/settings/signed/{id}  {enabled} → {id, public_key} ("" off)
  POST   /v3/user/webhooks/event/test                  {url, id?} → 204 once the receiver
         answered 2xx to a sample batch (signed with webhook ``id``'s key when it is
         signed); 400 naming ``url`` with the failure otherwise
  GET    /v3/user/webhooks/event/settings              legacy: the tenant's oldest webhook
  PATCH  /v3/user/webhooks/event/settings              legacy: update it, or create it
  GET    /v3/user/webhooks/event/settings/signed       legacy: {public_key}
  PATCH  /v3/user/webhooks/event/settings/signed       legacy: {enabled} → {public_key}
  GET    /v3/user/webhooks/event/dead_letters          ?webhook_id&limit(1..50)&offset →
         {dead_letters: [{id, webhook_id, first_offset, last_offset, count, reason,
         created_at, events: [...]}]}
  POST   /v3/user/webhooks/event/dead_letters/replay   {webhook_id, ids?} → 202 {id, status}
  POST   /v3/user/webhooks/event/replay                {webhook_id, start_time, end_time,
         event_types?, categories?} → 202 {id, status}
  GET    /v3/user/webhooks/event/replay/{id}           → {id, webhook_id, kind, status,
         events, batches, failed, error, created_at, finished_at}

A replay window is ``start_time <= event time < end_time`` (unix seconds); without
``event_types`` it sends the webhook's enabled types. Every route reads and writes only
the key's tenant (another tenant's id answers 404) and asks for SendGrid's scope:
``user.webhooks.event.settings.read|create|update|delete``, ``...test.create``.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from postline.api.app import App
from postline.api.errors import HttpError, http_error
from postline.api.requests import decode_body, int_param, key_tenant
from postline.api.types import Request, Response
from postline.model.events import make_event
from postline.webhooks import batching
from postline.webhooks.dispatcher import signer_for
from postline.webhooks.replay import MAX_RUNNING, Window
from postline.webhooks.service import WebhookService, not_found
from postline.webhooks.settings import (
    EVENT_NAMES,
    SETTING_EVENTS,
    SignedRequest,
    TestRequest,
    Webhook,
    WebhookRequest,
    check_request,
    iso,
    shape,
)
from postline.webhooks.store import Replay

T = TypeVar("T")
BASE = "/v3/user/webhooks/event"
MAX_DEAD_LETTER_PAGE = 50  # each dead letter carries its batch (up to batch_bytes)
MAX_IDS = 1000
MAX_CATEGORIES = 10  # as many as a message may have
MAX_CATEGORY = 255
MAX_TIME = 2**40  # unix seconds; far beyond any event


class ReplayRequest(msgspec.Struct):
    webhook_id: str
    start_time: int
    end_time: int
    event_types: list[str] | None = None
    categories: list[str] | None = None


class DeadLetterReplay(msgspec.Struct):
    webhook_id: str
    ids: list[int] | None = None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body))


def _with_include(req: Request, body: dict[str, object]) -> dict[str, object]:
    """``include=account_status_change`` adds that field (always false: no such events)."""
    if ("include", "account_status_change") in parse_qsl(req.query):
        body["account_status_change"] = False
    return body


_BLANK = Webhook("", "", "", False, frozenset())  # the legacy GET of a tenant without one


class WebhookApi:
    def __init__(self, service: WebhookService) -> None:
        self.svc = service

    # -- the multi-webhook API ------------------------------------------------------------

    async def create(self, req: Request) -> Response:
        hook = await self.svc.create(key_tenant(req), decode_body(req, WebhookRequest))
        return _json(201, shape(hook, public_key=False))

    async def list_all(self, req: Request) -> Response:
        hooks = await self.svc.all(key_tenant(req))
        body = [_with_include(req, shape(h)) for h in hooks]
        return _json(200, {"max_allowed": self.svc.deps.cfg.max_webhooks, "webhooks": body})

    async def get_one(self, req: Request, params: dict[str, str]) -> Response:
        hook = await self.svc.get(key_tenant(req), params["id"])
        return _json(200, _with_include(req, shape(hook)))

    async def update(self, req: Request, params: dict[str, str]) -> Response:
        body = decode_body(req, WebhookRequest)
        hook = await self.svc.update(key_tenant(req), params["id"], body)
        return _json(200, _with_include(req, shape(hook, public_key=False)))

    async def delete(self, req: Request, params: dict[str, str]) -> Response:
        await self.svc.delete(key_tenant(req), params["id"])
        return Response(204, content_type=None)

    async def get_signed(self, req: Request, params: dict[str, str]) -> Response:
        hook = await self.svc.get(key_tenant(req), params["id"])
        return _json(200, {"id": hook.id, "public_key": _public(hook)})

    async def set_signed(self, req: Request, params: dict[str, str]) -> Response:
        enabled = decode_body(req, SignedRequest).enabled
        hook = await self.svc.set_signed(key_tenant(req), params["id"], enabled)
        return _json(200, {"id": hook.id, "public_key": _public(hook)})

    async def test(self, req: Request) -> Response:
        body = decode_body(req, TestRequest)
        problem = check_request(WebhookRequest(url=body.url), creating=True)
        if problem is not None:
            raise HttpError(400, [problem])
        await self.svc.check_url(body.url)
        signer = None
        if body.id:
            signer = signer_for(await self.svc.get(key_tenant(req), body.id))
        posted = await self.svc.deps.poster.post(body.url, sample_batch(), signer)
        if not posted.ok:
            raise http_error(400, f"the test post to {body.url} failed: {posted.reason}", "url")
        return Response(204, content_type=None)

    # -- the legacy single-webhook API: the tenant's oldest webhook -----------------------

    async def legacy_get(self, req: Request) -> Response:
        hook = await self.svc.first(key_tenant(req)) or _BLANK
        return _json(200, shape(hook, public_key=False))

    async def legacy_update(self, req: Request) -> Response:
        tenant, body = key_tenant(req), decode_body(req, WebhookRequest)
        hook = await self.svc.first(tenant)
        if hook is None:
            hook = await self.svc.create(tenant, body)
        else:
            hook = await self.svc.update(tenant, hook.id, body)
        return _json(200, shape(hook, public_key=False))

    async def legacy_get_signed(self, req: Request) -> Response:
        hook = await self.svc.first(key_tenant(req))
        return _json(200, {"public_key": "" if hook is None else _public(hook)})

    async def legacy_set_signed(self, req: Request) -> Response:
        tenant, enabled = key_tenant(req), decode_body(req, SignedRequest).enabled
        hook = await self.svc.first(tenant)
        if hook is None:
            raise http_error(404, "no event webhook: create one first (PATCH settings)")
        hook = await self.svc.set_signed(tenant, hook.id, enabled)
        return _json(200, {"public_key": _public(hook)})

    # -- dead letters and replays ---------------------------------------------------------

    async def dead_letters(self, req: Request) -> Response:
        tenant, params = key_tenant(req), dict(parse_qsl(req.query, keep_blank_values=True))
        hook_id = params.get("webhook_id") or None
        if hook_id is not None:
            await self.svc.get(tenant, hook_id)
        limit = int_param(params, "limit", 10, 1, MAX_DEAD_LETTER_PAGE)
        offset = int_param(params, "offset", 0, 0, 2**62)
        store = self.svc.deps.store
        rows = await store.run(store.db.dead_letters, tenant, hook_id, limit, offset, None)
        letters = [
            {
                "id": r.id,
                "webhook_id": r.webhook_id,
                "first_offset": r.first_offset,
                "last_offset": r.last_offset,
                "count": r.count,
                "reason": r.reason,
                "created_at": int(r.at),
                "events": msgspec.Raw(r.body),
            }
            for r in rows
        ]
        return _json(200, {"dead_letters": letters})

    async def replay_dead_letters(self, req: Request) -> Response:
        tenant, body = key_tenant(req), decode_body(req, DeadLetterReplay)
        if body.ids is not None and not 1 <= len(body.ids) <= MAX_IDS:
            raise http_error(400, f"ids must list 1 to {MAX_IDS} dead letters", "ids")
        hook = await self.svc.get(tenant, body.webhook_id)
        self._room(tenant)
        replay = await self.svc.replays.dead_letters(hook, body.ids, req.body.decode())
        return _json(202, {"id": replay.id, "status": replay.status})

    async def replay(self, req: Request) -> Response:
        tenant, body = key_tenant(req), decode_body(req, ReplayRequest)
        window = _window(body)
        hook = await self.svc.get(tenant, body.webhook_id)
        self._room(tenant)
        replay = await self.svc.replays.window(hook, window, req.body.decode())
        return _json(202, {"id": replay.id, "status": replay.status})

    async def replay_status(self, req: Request, params: dict[str, str]) -> Response:
        store = self.svc.deps.store
        replay = await store.run(store.db.replay, key_tenant(req), params["id"])
        if replay is None:
            raise not_found()
        return _json(200, self._replay_shape(replay))

    def _room(self, tenant: str) -> None:
        if self.svc.replays.running(tenant) >= MAX_RUNNING:
            message = f"{MAX_RUNNING} replays are running already; wait until one is done"
            raise http_error(429, message)

    def _replay_shape(self, r: Replay) -> dict[str, Any]:
        live = self.svc.replays.live.get(r.id)
        events, batches, failed = live.tuple() if live else (r.events, r.batches, r.failed)
        return {
            "id": r.id,
            "webhook_id": r.webhook_id,
            "kind": r.kind,
            "status": r.status,
            "events": events,
            "batches": batches,
            "failed": failed,
            "error": r.error,
            "created_at": iso(r.created),
            "finished_at": None if r.finished is None else iso(r.finished),
        }


def _public(hook: Webhook) -> str:
    return hook.public_key if hook.signed else ""


def _window(body: ReplayRequest) -> Window:
    for name in ("start_time", "end_time"):
        if not 0 <= getattr(body, name) <= MAX_TIME:
            raise http_error(400, f"{name} must be unix seconds from 0 to {MAX_TIME}", name)
    if body.end_time <= body.start_time:
        raise http_error(400, "end_time must be after start_time", "end_time")
    types = None
    if body.event_types is not None:
        types = frozenset(SETTING_EVENTS.get(t, t) for t in body.event_types)
        unknown = sorted(types - EVENT_NAMES)
        if unknown or not types:
            what = f"unknown event type {unknown[0]!r}" if unknown else "no event type"
            raise http_error(400, f"{what}: use {', '.join(sorted(EVENT_NAMES))}", "event_types")
    categories = None
    if body.categories is not None:
        bad = [c for c in body.categories if not 0 < len(c) <= MAX_CATEGORY]
        if bad or not 0 < len(body.categories) <= MAX_CATEGORIES:
            message = f"categories must list 1 to {MAX_CATEGORIES} names of 1 to {MAX_CATEGORY}"
            raise http_error(400, message + " characters", "categories")
        categories = frozenset(body.categories)
    return Window(float(body.start_time), float(body.end_time), types, categories)


def sample_batch() -> bytes:
    """What ``POST .../test`` sends: one event of each type, to example@test.com."""
    extra: dict[str, dict[str, Any]] = {
        "delivered": {"response": "250 OK", "ip": "127.0.0.1", "tls": 1},
        "deferred": {"response": "400 try again later", "attempt": "1", "ip": "127.0.0.1"},
        "bounce": {"reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"},
        "dropped": {"reason": "Bounced Address", "status": "5.0.0"},
        "click": {"url": "https://example.com", "useragent": "Mozilla/5.0", "ip": "127.0.0.1"},
        "open": {"useragent": "Mozilla/5.0", "ip": "127.0.0.1", "sg_machine_open": False},
    }
    events = [
        make_event(
            name,
            tenant="",
            email="example@test.com",
            ts=0.0,
            sg_message_id="14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            smtp_id="<14c5d75ce93.dfd.64b469@ismtpd-555>",
            categories=["cat facts"],
            extra=extra.get(name),
        )
        for name in sorted(EVENT_NAMES)
    ]
    return batching.body([(0, e) for e in events])


def register(app: App, service: WebhookService) -> None:
    """Add every webhook route to ``app``."""
    api, s = WebhookApi(service), f"{BASE}/settings"
    read, create = "user.webhooks.event.settings.read", "user.webhooks.event.settings.create"
    update, delete = "user.webhooks.event.settings.update", "user.webhooks.event.settings.delete"
    app.add("POST", s, api.create, scope=create)
    app.add("GET", s, api.legacy_get, scope=read)
    app.add("PATCH", s, api.legacy_update, scope=update)
    app.add("GET", f"{s}/all", api.list_all, scope=read)
    app.add("GET", f"{s}/signed", api.legacy_get_signed, scope=read)
    app.add("PATCH", f"{s}/signed", api.legacy_set_signed, scope=update)
    app.add_pattern("GET", f"{s}/{{id}}", api.get_one, scope=read)
    app.add_pattern("PATCH", f"{s}/{{id}}", api.update, scope=update)
    app.add_pattern("DELETE", f"{s}/{{id}}", api.delete, scope=delete)
    app.add_pattern("GET", f"{s}/signed/{{id}}", api.get_signed, scope=read)
    app.add_pattern("PATCH", f"{s}/signed/{{id}}", api.set_signed, scope=update)
    app.add("POST", f"{BASE}/test", api.test, scope="user.webhooks.event.test.create")
    app.add("GET", f"{BASE}/dead_letters", api.dead_letters, scope=read)
    app.add("POST", f"{BASE}/dead_letters/replay", api.replay_dead_letters, scope=update)
    app.add("POST", f"{BASE}/replay", api.replay, scope=update)
    app.add_pattern("GET", f"{BASE}/replay/{{id}}", api.replay_status, scope=read)
