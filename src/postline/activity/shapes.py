"""Rows of the activity store in SendGrid's response shapes (tsg_email_activity_v3.json).

Pure: the API hands rows in, JSON-ready dicts come out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from postline.activity.schema import ACTIVITY_NAMES

Json = dict[str, Any]
# The store's "processing" is the OpenAPI's Status "processed".
STATUS_NAMES = {"processing": "processed"}
_decode = msgspec.json.Decoder().decode


def iso(moment: datetime) -> str:
    """``2017-10-13T18:56:21Z``: the OpenAPI's example form (stored times are naive UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(row: tuple[Any, ...]) -> Json:
    """One message of ``GET /v3/messages`` from a row of schema.search_sql."""
    from_email, msg_id, subject, to_email, status, opens, clicks, last = row
    return {
        "from_email": from_email,
        "msg_id": msg_id,
        "subject": subject,
        "to_email": to_email,
        "status": STATUS_NAMES.get(status, status),
        "opens_count": opens,
        "clicks_count": clicks,
        "last_event_time": iso(last),
    }


def status_of(events: list[str]) -> str:
    """The message status from its event types (schema.message_relation, in Python)."""
    if any(e in ("delivered", "open", "click") for e in events):
        return "delivered"
    if any(e in ("bounce", "dropped") for e in events):
        return "not_delivered"
    return "processed"


def event_entry(event: str, ts: datetime, data: str) -> Json:
    """One entry of a message's ``events`` (the OpenAPI's Event)."""
    obj = _object(data)
    entry: Json = {"event_name": ACTIVITY_NAMES.get(event, event), "processed": iso(ts)}
    reason = obj.get("reason") or (obj.get("response") if event == "deferred" else None)
    if isinstance(reason, str) and reason:
        entry["reason"] = reason[:1024]
    attempt = obj.get("attempt")
    if event == "deferred" and isinstance(attempt, str | int) and str(attempt).isdigit():
        entry["attempt_num"] = int(attempt)
    if event == "bounce":
        entry["bounce_type"] = "soft" if obj.get("type") == "blocked" else "hard"
    for key, name in (("url", "url"), ("useragent", "http_user_agent")):
        value = obj.get(key)
        if isinstance(value, str):
            entry[name] = value
    return entry


def _object(data: str) -> Json:
    try:
        obj = _decode(data)
    except msgspec.DecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def message(msg_id: str, rows: list[tuple[Any, ...]]) -> Json:
    """``GET /v3/messages/{msg_id}`` from schema.SELECT_MESSAGE rows of one recipient."""
    first: dict[str, Any] = {}
    for _to, _event, _ts, from_email, subject, template_id, asm, cats, args, _data in rows:
        for key, value in (
            ("from_email", from_email),
            ("subject", subject),
            ("template_id", template_id),
            ("asm_group_id", asm),
            ("categories", cats or None),
            ("unique_args", args or None),
        ):
            if value is not None:
                first.setdefault(key, value)
    args = first.get("unique_args")
    return {
        "from_email": first.get("from_email", ""),
        "msg_id": msg_id,
        "subject": first.get("subject", ""),
        "to_email": rows[0][0],
        "status": status_of([r[1] for r in rows]),
        "template_id": first.get("template_id", ""),
        "asm_group_id": first.get("asm_group_id"),
        "teammate": "",
        "api_key_id": "",
        "events": [event_entry(r[1], r[2], r[9]) for r in rows],
        "originating_ip": "",
        "categories": list(first.get("categories") or []),
        "unique_args": msgspec.json.encode(dict(args)).decode() if args else "Null",
        "outbound_ip": "",
        "outbound_ip_type": "dedicated",
    }
