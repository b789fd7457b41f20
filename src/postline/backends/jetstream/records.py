"""What the JetStream spool stores, and the subjects and ids it stores it under.

Streams (``<p>`` is the configured prefix, e.g. ``PL``):

* ``<p>_SPOOL``: one subject per delivery, ``<p>.d.<queue>.<delivery id>``, holding its
  current state (``max_msgs_per_subject = 1``: a state change replaces the message). A
  terminal settle writes a tombstone (empty, header ``PL-Gone``). ``<queue>`` is a hash of
  (tenant, domain), so a queue or a set of queues is a subject filter.
* ``<p>_MSGS``: ``<p>.m.<message id>`` (personalization, ids, body reference) and
  ``<p>.b.<body id>`` (a body up to INLINE_MAX); larger bodies are objects in the Object
  Store bucket ``<p>_BODIES``.
* ``<p>_EVENTS``: ``<p>.e``, events batched into messages; an event's offset is
  ``sequence << 16 | index in its message``.
* KV ``<p>_STATE``: consumer offsets, the prune watermark, per-node counters, the node
  incarnation counter.
"""

from __future__ import annotations

import hashlib
import time

import msgspec

from postline.model.events import EventRecord

INLINE_MAX = 512 * 1024  # bodies above go to the Object Store, never over max_payload
EVENTS_MAX_BYTES = 768 * 1024  # one events message stays under the 1 MiB max_payload
OFFSET_BITS = 16
EVENTS_MAX_COUNT = (1 << OFFSET_BITS) - 1
GONE = "PL-Gone"
EPOCH_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
SLOT_BITS = 12


class DeliveryState(msgspec.Struct, array_like=True, frozen=True):
    delivery_id: int
    message_id: int
    body_id: int
    tenant: str
    rcpt: str
    domain: str
    due_at: float
    expires_at: float
    created_at: float
    attempts: int
    leased: bool
    sg_message_id: str


class MessageRecord(msgspec.Struct, array_like=True, frozen=True):
    message_id: int
    body_id: int
    body_in_object_store: bool
    sg_message_id: str
    smtp_id: str
    tenant: str
    personalization: bytes


encode = msgspec.msgpack.Encoder().encode
decode_delivery = msgspec.msgpack.Decoder(DeliveryState).decode
decode_message = msgspec.msgpack.Decoder(MessageRecord).decode
decode_events = msgspec.msgpack.Decoder(list[EventRecord]).decode
ORIGIN = "PL-Origin"  # header of an events message imported from another datacenter


def events_of(data: bytes, headers: dict[str, str] | None) -> list[EventRecord]:
    """The events of one events message, each with its origin datacenter when the
    message was imported (cluster/imports.py, cluster/origins.py)."""
    events = decode_events(data)
    origin = headers.get(ORIGIN) if headers else None
    if origin:
        replace = msgspec.structs.replace
        events = [replace(e, origin=origin) for e in events]
    return events


class Names:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.spool, self.msgs, self.events = f"{prefix}_SPOOL", f"{prefix}_MSGS", f"{prefix}_EVENTS"
        self.bodies, self.state = f"{prefix}_BODIES", f"{prefix}_STATE"
        self.deliveries = f"{prefix}.d.>"
        self.event_subject = f"{prefix}.e"

    def delivery(self, tenant: str, domain: str, delivery_id: int) -> str:
        return f"{self.prefix}.d.{queue_token(tenant, domain)}.{delivery_id}"

    def queue(self, tenant: str, domain: str) -> str:
        return f"{self.prefix}.d.{queue_token(tenant, domain)}.*"

    def message(self, message_id: int) -> str:
        return f"{self.prefix}.m.{message_id}"

    def body(self, body_id: int) -> str:
        return f"{self.prefix}.b.{body_id}"


def queue_token(tenant: str, domain: str) -> str:
    return hashlib.blake2b(f"{tenant}\0{domain}".encode(), digest_size=8).hexdigest()


def kv_key(name: str) -> str:
    """A KV key for any consumer name (keys allow only ``[-/_=.a-zA-Z0-9]``)."""
    ok = name.replace("-", "").replace("_", "").isalnum() and name.isascii()
    return name if ok else "x" + name.encode().hex()


def content_id(*parts: bytes) -> str:
    """A Nats-Msg-Id from content: a retried publish of the same thing is a duplicate."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


class Ids:
    """Delivery, message and body ids: ``(counter << 12) | slot``. The counter starts at
    the microseconds since 2024 and only grows (ids of one node are in creation order);
    ``slot`` is this node's incarnation number (a KV counter taken at open) modulo 4096,
    so two live nodes share a slot only if 4096 opens happened between their starts."""

    def __init__(self, incarnation: int) -> None:
        self._slot = incarnation % (1 << SLOT_BITS)
        self._counter = 0

    def next(self) -> int:
        self._counter = max(self._counter + 1, time.time_ns() // 1000 - EPOCH_US)
        return (self._counter << SLOT_BITS) | self._slot


def offset(seq: int, index: int) -> int:
    return (seq << OFFSET_BITS) | index


def split_offset(off: int) -> tuple[int, int]:
    return off >> OFFSET_BITS, off & EVENTS_MAX_COUNT
