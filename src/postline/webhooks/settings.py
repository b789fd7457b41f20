"""The vocabulary of event webhooks: a webhook's settings, its event types, request bodies.

SendGrid names a webhook's event types by eleven booleans (``spam_report``...); the events
themselves carry the event's name (``spamreport``...). :data:`SETTING_EVENTS` maps one to
the other. Request bodies are decoded into :class:`WebhookRequest` (every field optional:
PATCH changes only what it names) and checked by :func:`check_request`, which returns the
first problem as a :class:`FieldError` with its field, as SendGrid's 400s do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import msgspec

from postline.model.errors import FieldError

# The settings booleans (EventWebhookRequest) and the event name each one selects.
SETTING_EVENTS: dict[str, str] = {
    "bounce": "bounce",
    "click": "click",
    "deferred": "deferred",
    "delivered": "delivered",
    "dropped": "dropped",
    "group_resubscribe": "group_resubscribe",
    "group_unsubscribe": "group_unsubscribe",
    "open": "open",
    "processed": "processed",
    "spam_report": "spamreport",
    "unsubscribe": "unsubscribe",
}
EVENT_NAMES = frozenset(SETTING_EVENTS.values())

MAX_URL = 2048  # octets of a receiver URL
MAX_NAME = 100  # friendly_name
MAX_OAUTH = 2048  # each oauth_* field


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    tenant: str
    url: str
    enabled: bool
    types: frozenset[str]  # the settings names switched on (``spam_report``...)
    friendly_name: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None  # stored, never shown
    oauth_token_url: str | None = None
    signed: bool = False
    private_key: bytes | None = None  # PKCS#8 DER of the P-256 key, kept once made
    public_key: str = ""  # base64 DER SubjectPublicKeyInfo ("" before the first signing)
    start_offset: int = 0  # the log's head at creation: a new webhook gets no history
    created: float = 0.0
    updated: float = 0.0

    @property
    def events(self) -> frozenset[str]:
        """The event names this webhook receives."""
        return frozenset(SETTING_EVENTS[t] for t in self.types)


class WebhookRequest(msgspec.Struct, omit_defaults=True):
    """EventWebhookRequest: what POST and PATCH may set (None: not given)."""

    url: str | None = None
    enabled: bool | None = None
    bounce: bool | None = None
    click: bool | None = None
    deferred: bool | None = None
    delivered: bool | None = None
    dropped: bool | None = None
    group_resubscribe: bool | None = None
    group_unsubscribe: bool | None = None
    open: bool | None = None
    processed: bool | None = None
    spam_report: bool | None = None
    unsubscribe: bool | None = None
    friendly_name: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None
    oauth_token_url: str | None = None
    account_status_change: bool | None = None  # accepted; Postline has no such events


class SignedRequest(msgspec.Struct):
    enabled: bool


class TestRequest(msgspec.Struct):
    """EventWebhookTestRequest."""

    url: str
    id: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None
    oauth_token_url: str | None = None


def check_request(req: WebhookRequest, *, creating: bool) -> FieldError | None:
    """The first problem of a body, or None. ``url`` is checked further by urls.py."""
    if creating and req.url is None:
        return FieldError("The url parameter is required.", "url")
    if req.url is not None and len(req.url.encode()) > MAX_URL:
        return FieldError(f"url must be at most {MAX_URL} octets", "url")
    if req.friendly_name is not None and len(req.friendly_name) > MAX_NAME:
        return FieldError(f"friendly_name must be at most {MAX_NAME} characters", "friendly_name")
    for name in ("oauth_client_id", "oauth_client_secret", "oauth_token_url"):
        value = getattr(req, name)
        if value is not None and len(value) > MAX_OAUTH:
            return FieldError(f"{name} must be at most {MAX_OAUTH} characters", name)
    return _check_oauth(req)


def _check_oauth(req: WebhookRequest) -> FieldError | None:
    # EventWebhookRequest: a client id needs the token URL; a secret needs both.
    if req.oauth_client_id and not req.oauth_token_url:
        return FieldError("oauth_token_url is required with oauth_client_id", "oauth_token_url")
    if req.oauth_client_secret and not (req.oauth_client_id and req.oauth_token_url):
        message = "oauth_client_id and oauth_token_url are required with oauth_client_secret"
        return FieldError(message, "oauth_client_id")
    return None


def new_webhook(
    hook_id: str, tenant: str, req: WebhookRequest, start_offset: int, now: float
) -> Webhook:
    """A webhook made by POST: booleans not given are false, as SendGrid's are."""
    base = Webhook(hook_id, tenant, "", False, frozenset(), start_offset=start_offset)
    return apply(replace(base, created=now), req, now)


def apply(hook: Webhook, req: WebhookRequest, now: float) -> Webhook:
    """``hook`` with what ``req`` names changed (PATCH)."""
    types = set(hook.types)
    for name in SETTING_EVENTS:
        value = getattr(req, name)
        if value is True:
            types.add(name)
        elif value is False:
            types.discard(name)
    changes: dict[str, object] = {"types": frozenset(types), "updated": now}
    for name in ("url", "enabled", "friendly_name", "oauth_client_id", "oauth_token_url"):
        value = getattr(req, name)
        if value is not None:
            changes[name] = value
    if req.oauth_client_secret is not None:
        changes["oauth_client_secret"] = req.oauth_client_secret
    return replace(hook, **changes)  # type: ignore[arg-type]


def iso(ts: float) -> str:
    """``2023-01-01T12:00:00Z``, the OpenAPI's date-time shape."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def shape(hook: Webhook, *, dates: bool = True, public_key: bool = True) -> dict[str, object]:
    """A webhook as the OpenAPI's responses show it (EventWebhookSignedResponse)."""
    out: dict[str, object] = {"enabled": hook.enabled, "url": hook.url}
    for name in SETTING_EVENTS:
        out[name] = name in hook.types
    out["friendly_name"] = hook.friendly_name
    out["id"] = hook.id
    out["oauth_client_id"] = hook.oauth_client_id
    out["oauth_token_url"] = hook.oauth_token_url
    if dates:
        out["created_date"] = iso(hook.created)
        out["updated_date"] = iso(hook.updated)
    if public_key:
        out["public_key"] = hook.public_key if hook.signed else ""
    return out
