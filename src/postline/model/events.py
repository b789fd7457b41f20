"""Events in SendGrid's event-webhook schema.

An :class:`EventRecord` is what the event log stores: a few indexed columns plus ``data``,
the exact JSON object a webhook receiver will get (``email, timestamp, event, sg_event_id,
sg_message_id, smtp-id, category`` and the custom args flattened into the top level;
reserved keys win over custom args, as SendGrid documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from postline.model.ids import new_event_id

PROCESSED = "processed"
DROPPED = "dropped"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCE = "bounce"
DROPPED_STATUS = "5.0.0"  # the status of every dropped event, as SendGrid's

_encode = msgspec.json.Encoder().encode


class EventRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    ts: float
    tenant: str
    event: str
    email: str
    sg_message_id: str
    data: bytes  # the webhook-ready JSON object
    # What the activity store needs and the webhook must not show, a JSON object or b"":
    # on accept-time events (processed, dropped) {"from_email", "subject"} and, when set,
    # "template_id", "asm_group_id" (accept/expand.py, accept/relay.py). Never posted.
    meta: bytes = b""
    # The datacenter this event came from when it was imported into another datacenter's
    # log (cluster/imports.py; set by the reader from the message's PL-Origin header,
    # never stored in the event itself); "" for the log's own events.
    origin: str = ""


def make_event(
    event: str,
    *,
    tenant: str,
    email: str,
    ts: float,
    sg_message_id: str,
    smtp_id: str,
    categories: list[str] | None = None,
    custom_args: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    meta: bytes = b"",
) -> EventRecord:
    obj: dict[str, Any] = dict(custom_args) if custom_args else {}
    if extra:
        obj.update(extra)
    obj["email"] = email
    obj["timestamp"] = int(ts)
    obj["event"] = event
    obj["sg_event_id"] = new_event_id()
    obj["sg_message_id"] = sg_message_id
    obj["smtp-id"] = smtp_id
    if categories:
        obj["category"] = categories
    return EventRecord(ts, tenant, event, email, sg_message_id, _encode(obj), meta)


def message_meta(
    from_email: str | None,
    subject: str | None,
    template_id: str | None = None,
    asm_group_id: int | None = None,
) -> bytes:
    """The ``meta`` of a processed event: what the activity store shows of the message."""
    obj: dict[str, Any] = {"from_email": from_email or "", "subject": subject or ""}
    if template_id:
        obj["template_id"] = template_id
    if asm_group_id is not None:
        obj["asm_group_id"] = asm_group_id
    return _encode(obj)


def event_json(record: EventRecord) -> dict[str, Any]:
    """The decoded JSON object of an event (tests and consumers)."""
    result: dict[str, Any] = msgspec.json.decode(record.data)
    return result
