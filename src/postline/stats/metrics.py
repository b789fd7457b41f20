"""Events → SendGrid's statistics metrics, and a batch of events folded into increments.

The sixteen metric names are SendGrid's (tsg_stats_v3.json, StatsAdvancedGlobalStats).
What each event adds, one row of this table per event type:

* ``processed`` → processed, requests
* ``dropped`` → requests, and by reason: "Bounced Address" → bounce_drops, "Unsubscribed
  Address" → unsubscribe_drops, "Spam Reporting Address" → spam_report_drops, "Invalid" →
  invalid_emails (other reasons count only as a request). SendGrid counts a request per
  recipient of a send, dropped or not (its example: requests 3 = processed 2 + one invalid
  email), so requests = processed + dropped.
* ``delivered`` → delivered; ``deferred`` → deferred (each deferral, as the event stream has it)
* ``bounce`` → blocks when its ``type`` is "blocked", else bounces (an expiry is a bounce)
* ``open`` → opens, ``click`` → clicks; the first of each per (message, recipient) also
  unique_opens / unique_clicks (the store remembers which were seen: :class:`Rollup.firsts`)
* ``spamreport`` → spam_reports; ``unsubscribe`` and ``group_unsubscribe`` → unsubscribes

Each event counts for its tenant, on its UTC day, once globally (category "") and once per
distinct category it carries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from postline.model.events import EventRecord

METRICS = (
    "blocks",
    "bounce_drops",
    "bounces",
    "clicks",
    "deferred",
    "delivered",
    "invalid_emails",
    "opens",
    "processed",
    "requests",
    "spam_report_drops",
    "spam_reports",
    "unique_clicks",
    "unique_opens",
    "unsubscribe_drops",
    "unsubscribes",
)
METRIC_SET = frozenset(METRICS)

DROP_METRICS = {
    "Bounced Address": "bounce_drops",
    "Unsubscribed Address": "unsubscribe_drops",
    "Spam Reporting Address": "spam_report_drops",
    "Invalid": "invalid_emails",
}

_PLAIN: dict[str, tuple[str, ...]] = {
    "processed": ("processed", "requests"),
    "delivered": ("delivered",),
    "deferred": ("deferred",),
    "open": ("opens",),
    "click": ("clicks",),
    "spamreport": ("spam_reports",),
    "unsubscribe": ("unsubscribes",),
    "group_unsubscribe": ("unsubscribes",),
}
UNIQUE = {"open": "unique_opens", "click": "unique_clicks"}  # counted once per recipient
DAY = 86400


class Fields(msgspec.Struct):
    """The few fields of an event's JSON the metrics depend on (the rest is skipped)."""

    category: Any = None
    reason: Any = ""
    type: Any = ""


_decode = msgspec.json.Decoder(Fields).decode


def _fields(raw: bytes) -> Fields:
    """A corrupt stored event still counts by its type (a batch that always raised would
    stop the consumer for good)."""
    try:
        return _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Fields()


def metrics_of(event: str, reason: object = "", bounce_type: object = "") -> tuple[str, ...]:
    """The metrics one event adds 1 to (unique_* aside: that needs the store's memory)."""
    plain = _PLAIN.get(event)
    if plain is not None:
        return plain
    if event == "dropped":
        drop = DROP_METRICS.get(reason) if isinstance(reason, str) else None
        return ("requests",) if drop is None else ("requests", drop)
    if event == "bounce":
        return ("blocks",) if bounce_type == "blocked" else ("bounces",)
    return ()


def categories_of(raw: object) -> list[str]:
    """The distinct categories of an event ("category" is a list, or one string)."""
    if isinstance(raw, str):
        return [raw] if raw else []
    if not isinstance(raw, list):
        return []
    return list(dict.fromkeys(c for c in raw if isinstance(c, str) and c))


# (tenant, category or "", UTC day number, metric) → count
Key = tuple[str, str, int, str]
# What events with the same effect share: (tenant, UTC day, metrics, categories as sent).
# A batch holds few distinct shapes (events come in time order), so each event costs one
# dict increment and the expansion into counters runs once per shape.
Shape = tuple[str, int, tuple[str, ...], tuple[Any, ...]]


def first_key(tenant: str, metric: str, sg_message_id: str, email: str) -> int:
    """A signed 64-bit key (SQLite's INTEGER PRIMARY KEY, the cheapest index to insert
    into); two pairs colliding costs one unique open, at a chance of n²/2⁶⁵ over the n
    pairs remembered."""
    raw = f"{tenant}\0{metric}\0{sg_message_id}\0{email.lower()}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


def _categories_key(raw: object) -> tuple[Any, ...]:
    if isinstance(raw, list):
        key = tuple(raw)
        try:
            hash(key)
        except TypeError:  # not a list of strings: keep only the strings
            return tuple(categories_of(raw))
        return key
    return (raw,) if isinstance(raw, str) else ()


@dataclass(frozen=True, slots=True)
class First:
    """An open or click that adds to unique_* only if its (message, recipient) is new."""

    tenant: str
    metric: str  # unique_opens / unique_clicks
    key: int  # 64-bit hash of (tenant, metric, sg_message_id, lower-cased email)
    day: int
    categories: tuple[Any, ...]  # as sent (see Shape)


@dataclass(slots=True)
class Rollup:
    """One batch of events folded into a few counter increments."""

    shapes: dict[Shape, int] = field(default_factory=dict)
    firsts: list[First] = field(default_factory=list)
    events: int = 0  # events read
    counted: int = 0  # events that added to at least one metric

    def add(self, rec: EventRecord) -> None:
        self.events += 1
        data = _fields(rec.data)
        metrics = metrics_of(rec.event, data.reason, data.type)
        if not metrics:
            return
        self.counted += 1
        day = int(rec.ts // DAY)
        cats = _categories_key(data.category)
        shape = (rec.tenant, day, metrics, cats)
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        unique = UNIQUE.get(rec.event)
        if unique is not None:
            key = first_key(rec.tenant, unique, rec.sg_message_id, rec.email)
            self.firsts.append(First(rec.tenant, unique, key, day, cats))

    def add_first(self, first: First) -> None:
        """Count a unique open/click the store found to be new."""
        shape = (first.tenant, first.day, (first.metric,), first.categories)
        self.shapes[shape] = self.shapes.get(shape, 0) + 1

    def counts(self) -> dict[Key, int]:
        """The increments: each shape counted globally ("") and once per distinct category."""
        out: dict[Key, int] = {}
        for (tenant, day, metrics, raw), n in self.shapes.items():
            for cat in ("", *categories_of(list(raw))):
                for metric in metrics:
                    key = (tenant, cat, day, metric)
                    out[key] = out.get(key, 0) + n
        return out


def fold(records: Iterable[EventRecord]) -> Rollup:
    rollup = Rollup()
    for rec in records:
        rollup.add(rec)
    return rollup
