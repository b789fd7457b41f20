"""What ``postline audit`` reads of the webhooks: one :class:`AuditWebhook` per webhook
with its tenant, enabled flag, start offset, event names, delivered and dead ranges (from
the ledger) and the ``sg_event_id`` of every dead-lettered event.

``audit_state(data_dir)`` reads the node's ``webhooks.db`` (store.py) read-only: the audit
runs in another process while the node runs. ``audit_webhooks`` builds the view from rows,
for it and for cluster mode's PostgreSQL store (pg_store.audit_state).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from postline.webhooks.settings import Webhook
from postline.webhooks.store import FILE, HOOK_COLUMNS, hook_from_row


@dataclass
class AuditWebhook:
    id: str
    tenant: str
    enabled: bool
    start_offset: int
    events: frozenset[str]  # event names (``spamreport``), not settings names
    delivered: list[tuple[int, int]] = field(default_factory=list)  # inclusive offset ranges
    dead: list[tuple[int, int]] = field(default_factory=list)
    dead_event_ids: set[str] = field(default_factory=set)  # still in the dead-letter store
    created: float = 0.0  # when it was made (cluster mode: where its start is in each log)


class _EventId(msgspec.Struct):
    sg_event_id: str = ""


_decode_ids = msgspec.json.Decoder(list[_EventId]).decode


def audit_state(data_dir: str | Path) -> list[AuditWebhook]:
    """Every webhook and what its ledger and dead letters say (read-only; [] without a
    webhooks.db)."""
    path = Path(data_dir) / FILE
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _audit(conn)
    finally:
        conn.close()


def _audit(conn: sqlite3.Connection) -> list[AuditWebhook]:
    hooks = [
        hook_from_row(row)
        for row in conn.execute(f"SELECT {HOOK_COLUMNS} FROM webhooks ORDER BY seq")
    ]
    sql = "SELECT webhook_id, first_offset, last_offset, status FROM ledger ORDER BY seq"
    letters = conn.execute("SELECT webhook_id, body FROM dead_letters ORDER BY id")
    return audit_webhooks(hooks, conn.execute(sql), letters)


def audit_webhooks(
    hooks: Iterable[Webhook],
    ledger: Iterable[Sequence[Any]],
    letters: Iterable[Sequence[Any]],
) -> list[AuditWebhook]:
    """What the audit needs of each webhook, from its ledger rows ``(webhook_id,
    first_offset, last_offset, status)`` and dead letters ``(webhook_id, body)``; this
    store's and the cluster's (pg_store.audit_state)."""
    found = {
        h.id: AuditWebhook(h.id, h.tenant, h.enabled, h.start_offset, h.events, created=h.created)
        for h in hooks
    }
    for hook_id, first, last, status in ledger:
        if hook_id in found:
            ranges = found[hook_id].delivered if status == "delivered" else found[hook_id].dead
            ranges.append((int(first), int(last)))
    for hook_id, body in letters:
        if hook_id in found:
            found[hook_id].dead_event_ids.update(e.sg_event_id for e in _decode_ids(bytes(body)))
    return list(found.values())
