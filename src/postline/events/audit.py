"""The audit's rule, pure: every accepted recipient is terminal or still queued, and every
event a webhook was due reached it or its dead-letter store.

Fed the event log (oldest first) and the spool's pending deliveries read in one snapshot:

* a recipient is *accepted* by its ``processed`` event (or ``dropped`` at accept);
* *terminal* on ``delivered``, ``bounce`` (an expiry is a bounce with status 4.4.7) or
  ``dropped``; a ``deferred`` changes nothing;
* otherwise it must still have a delivery row (queued or in flight); if not, it breaks the
  rule: accepted and then lost.

Webhooks: for each enabled webhook, every event of its tenant and types with an offset in
(start, committed] must lie in a range its dispatcher recorded as posted or dead-lettered;
later events are pending (counted, not a breach).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from postline.model.domain import email_key
from postline.model.events import BOUNCE, DELIVERED, DROPPED, PROCESSED

TERMINAL = frozenset({DELIVERED, BOUNCE, DROPPED})


@dataclass
class Breach:
    sg_message_id: str
    email: str
    last_event: str
    detail: str


@dataclass
class WebhookState:
    """What the webhook store recorded of one webhook (webhooks.audit_state)."""

    id: str
    tenant: str
    types: frozenset[str]
    start: int  # the log's head when it was created: earlier events are not its own
    committed: int  # its dispatcher's offset in the log
    ranges: Sequence[tuple[int, int]]  # (first, last) offsets posted or dead-lettered
    dead_letters: int = 0


@dataclass
class WebhookCount:
    id: str
    dead_letters: int = 0  # events in the dead-letter store now
    reached: int = 0
    pending: int = 0
    missing: list[int] = field(default_factory=list)  # offsets due and not reached


@dataclass
class Report:
    since: float | None
    oldest_event: float | None  # the log's oldest retained event (older ones are pruned)
    messages: int = 0
    recipients: int = 0
    terminal: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    breaches: list[Breach] = field(default_factory=list)
    webhooks: list[WebhookCount] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches and not any(w.missing for w in self.webhooks)


Row = tuple[int, float, str, str, str, str]  # offset, ts, tenant, event, email, sg_message_id


class Auditor:
    def __init__(self, webhooks: Sequence[WebhookState] = ()) -> None:
        self._last: dict[tuple[str, str], str] = {}  # (sg_message_id, email key) -> event
        self._spelling: dict[tuple[str, str], str] = {}
        self._hooks = [(w, _Ranges(w.ranges), WebhookCount(w.id, w.dead_letters)) for w in webhooks]

    def feed(self, rows: Iterable[Row], *, recipients: bool = True, webhooks: bool = True) -> None:
        """Audit ``rows`` (log order); ``recipients=False`` for events whose recipients
        another spool holds (imported from another datacenter), ``webhooks=False`` for
        events no webhook here is due (another datacenter posts them)."""
        last, spelling = self._last, self._spelling
        hooks = self._hooks if webhooks else []
        for offset, _ts, tenant, event, email, msg in rows:
            if recipients:
                key = (msg, email_key(email))
                before = last.get(key)
                if before is None:
                    if event in (PROCESSED, DROPPED):
                        spelling[key] = email
                        last[key] = event
                    # events of recipients accepted before the window are not audited
                elif before not in TERMINAL or event in TERMINAL:
                    last[key] = event
            for hook, ranges, count in hooks:
                if tenant != hook.tenant or event not in hook.types or offset <= hook.start:
                    continue
                if offset > hook.committed:
                    count.pending += 1
                elif ranges.covers(offset):
                    count.reached += 1
                else:
                    count.missing.append(offset)

    def report(
        self, queued: set[tuple[str, str]], since: float | None, oldest: float | None
    ) -> Report:
        """``queued``: (sg_message_id, email key) of every delivery row in the snapshot."""
        rep = Report(since, oldest)
        rep.messages = len({msg for msg, _ in self._last})
        rep.recipients = len(self._last)
        for key, event in self._last.items():
            if event in TERMINAL:
                rep.terminal[event] = rep.terminal.get(event, 0) + 1
            elif key in queued:
                rep.queued += 1
            else:
                detail = "not terminal and no longer queued"
                rep.breaches.append(Breach(key[0], self._spelling[key], event, detail))
        rep.webhooks = [count for _, _, count in self._hooks]
        return rep


class _Ranges:
    """Sorted, merged (first, last) ranges; ``covers`` by bisection."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for first, last in sorted(ranges):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._firsts = [m[0] for m in merged]
        self._lasts = [m[1] for m in merged]

    def covers(self, offset: int) -> bool:
        i = bisect.bisect_right(self._firsts, offset) - 1
        return i >= 0 and offset <= self._lasts[i]
