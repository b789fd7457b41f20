"""Suppressed recipients dropped inside the accept transaction (``AcceptBatch.drop_suppressed``).

The HTTP door asks the spool which recipients are suppressed before it builds a batch (one
read, then the write). The SMTP relay instead lets the spool decide inside the accept
transaction: one trip to the storage instead of two, and no window between the check and
the write. Measured with ``postline bench smtp`` (20 sessions, 2 KB messages): the
separate read cost ~120 µs of CPU per message, and the relay went from 1,665 to 2,016
msg/s without it. The HTTP door keeps its read on a reader thread: for its requests of
many recipients the lookup inside the transaction lengthens every group commit that
delivery's settles and leases wait for (``postline bench e2e``: 10% fewer msg/s in
alternating runs), though without delivery it doubled single-recipient accepts.

Every backend calls :func:`apply_drops` with what its lists say, in its transaction; the
batch is changed in place so that the caller sees what was stored: the dropped recipients
leave their message (a message left without recipients leaves the batch) and each one's
``processed`` event becomes ``dropped`` with the list's reason, as the HTTP path makes it.
A batch with an unsubscribe group (``asm_group_id``) also drops that group's members
("Unsubscribed Address"), looked up in the same read; when the tenant has no such group
(or no group of ``asm_groups_to_display``) the backend refuses the batch with
``UnknownGroups`` and stores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from postline.model.domain import email_key
from postline.model.events import DROPPED, DROPPED_STATUS, PROCESSED, EventRecord
from postline.spool.interface import AcceptBatch

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


def recipients(batch: AcceptBatch) -> list[str]:
    """Every recipient of the batch's messages, as the lists key them (email_key)."""
    return sorted({email_key(r) for m in batch.messages for r in m.recipients})


def groups(batch: AcceptBatch) -> tuple[int, ...]:
    """The unsubscribe groups the batch names: (asm group_id, *groups_to_display), or ()."""
    if batch.asm_group_id is None:
        return ()
    return (batch.asm_group_id, *batch.asm_groups_to_display)


def apply_drops(batch: AcceptBatch, drops: Mapping[str, str]) -> int:
    """Drop the recipients in ``drops`` (email_key -> reason) from ``batch``; the count."""
    if not drops:
        return 0
    gone: set[tuple[str, str]] = set()  # (sg_message_id, email_key)
    for m in batch.messages:
        kept = [r for r in m.recipients if email_key(r) not in drops]
        if len(kept) != len(m.recipients):
            gone.update((m.sg_message_id, email_key(r)) for r in m.recipients if r not in kept)
            m.recipients = kept
    batch.messages = [m for m in batch.messages if m.recipients]
    for i, e in enumerate(batch.events):
        key = email_key(e.email)
        if e.event == PROCESSED and (e.sg_message_id, key) in gone:
            batch.events[i] = _dropped(e, drops[key])
    return len(gone)


def _dropped(e: EventRecord, reason: str) -> EventRecord:
    data = _decode(e.data)
    data.pop("send_at", None)
    data["event"] = DROPPED
    data["reason"] = reason
    data["status"] = DROPPED_STATUS
    return EventRecord(e.ts, e.tenant, DROPPED, e.email, e.sg_message_id, _encode(data), e.meta)
