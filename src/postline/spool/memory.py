"""An in-memory Spool and EventLog for unit tests (passes the conformance suite).

Nothing survives the process. ``unavailable`` simulates a storage outage: while it holds a
reason, ``accept`` and ``settle`` raise :class:`SpoolUnavailable` and change nothing. A
``body_file`` is read whole (fine for tests), and only when a message keeps the body; a
missing, unreadable or wrongly sized file raises ValueError, as in the SQLite spool.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from postline.model.domain import domain_key, email_key
from postline.model.events import DROPPED, EventRecord
from postline.spool import drops
from postline.spool.drops import apply_drops
from postline.spool.interface import (
    DROP_REASONS,
    EXPIRE_LEASE,
    GROUP_DROP_REASON,
    AcceptBatch,
    BodyFile,
    Counts,
    Lease,
    QueueInfo,
    Settle,
    Settlement,
    SpoolUnavailable,
    StoredMessage,
    Suppression,
    UnknownGroups,
)


@dataclass(slots=True)
class _Delivery:
    id: int
    message_id: int
    tenant: str
    rcpt: str
    domain: str
    due_at: float
    expires_at: float
    created_at: float
    attempts: int = 0
    leased: bool = False


@dataclass(slots=True)
class _Message:
    body_id: int
    stored: StoredMessage
    pending: int


class MemorySpool:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._bodies: dict[int, tuple[bytes, int]] = {}  # id -> (data, refs)
        self._messages: dict[int, _Message] = {}
        self._deliveries: dict[int, _Delivery] = {}
        self._events: list[tuple[int, EventRecord]] = []
        self._appended = 0  # offsets are never reused, even after prune
        self._consumers: dict[str, int] = {}
        self._counters = {"delivered": 0, "bounced": 0, "expired": 0, "dropped": 0}
        self._suppressions: dict[tuple[str, str, str], tuple[float, str, str]] = {}
        # (tenant, unsubscribe group id) -> lower-cased members; a key is a group that exists
        self.asm_members: dict[tuple[str, int], set[str]] = {}
        self.unavailable: str | None = None

    # -- Spool ---------------------------------------------------------------------------

    async def accept(self, batch: AcceptBatch) -> None:
        self._check()
        body = batch.body
        if batch.body_file is not None and any(m.recipients for m in batch.messages):
            body = _read_body_file(batch.body_file)  # before anything changes
        if batch.drop_suppressed:
            found = await self.suppressed(
                batch.tenant, drops.recipients(batch), drops.groups(batch)
            )  # UnknownGroups: nothing stored
            apply_drops(batch, found)
        kept = [m for m in batch.messages if m.recipients]
        body_id = next(self._ids)
        if kept:
            self._bodies[body_id] = (body, len(kept))
        for m in kept:
            mid = next(self._ids)
            stored = StoredMessage(
                mid, m.sg_message_id, m.smtp_id, batch.tenant, body, m.personalization
            )
            self._messages[mid] = _Message(body_id, stored, len(m.recipients))
            for rcpt in m.recipients:
                did = next(self._ids)
                domain = domain_key(rcpt)
                self._deliveries[did] = _Delivery(
                    did,
                    mid,
                    batch.tenant,
                    rcpt,
                    domain,
                    m.due_at,
                    batch.expires_at,
                    batch.created_at,
                )
        self._append(batch.events)
        self._counters[DROPPED] += sum(1 for e in batch.events if e.event == DROPPED)

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        domain = domain.lower()
        due = [
            d
            for d in self._deliveries.values()
            if d.tenant == tenant and d.domain == domain and d.due_at <= now
        ]
        due.sort(key=lambda d: (d.due_at, d.id))
        return [self._take(d, now + lease_for) for d in due[: max(limit, 0)]]

    async def settle(self, settles: Sequence[Settle]) -> None:
        self._check()
        for s in settles:
            d = self._deliveries.get(s.lease.delivery_id)
            if d is None:
                continue  # settled already: nothing changes, no event
            if s.settlement is Settlement.DEFERRED:
                d.due_at, d.attempts, d.leased = s.retry_at, d.attempts + 1, False
            else:
                del self._deliveries[d.id]
                self._counters[s.settlement.value] += 1
                self._release_message(d.message_id)
            if s.event is not None:
                self._append([s.event])
            if s.suppress is not None:
                list_name, reason, status = s.suppress
                when = s.event.ts if s.event else time.time()
                entry = (when, reason, status)
                self._suppressions[(d.tenant, email_key(d.rcpt), list_name)] = entry

    async def release(self, leases: Sequence[Lease], due_at: float) -> None:
        for lease in leases:
            d = self._deliveries.get(lease.delivery_id)
            if d is not None:
                d.due_at, d.leased = due_at, False

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        return [self._messages[i].stored for i in message_ids if i in self._messages]

    async def queues(self, now: float) -> list[QueueInfo]:
        index: dict[tuple[str, str], tuple[float, int]] = {}
        for d in self._deliveries.values():
            key = (d.tenant, d.domain)
            due, size = index.get(key, (d.due_at, 0))
            index[key] = (min(due, d.due_at), size + 1)
        return [QueueInfo(t, dom, due, n) for (t, dom), (due, n) in sorted(index.items())]

    async def next_due(self, tenant: str, domain: str) -> float | None:
        domain = domain.lower()
        dues = [
            d.due_at for d in self._deliveries.values() if (d.tenant, d.domain) == (tenant, domain)
        ]
        return min(dues, default=None)

    async def expire(self, now: float, limit: int) -> list[Lease]:
        expired = [
            d
            for d in self._deliveries.values()
            if d.expires_at <= now and (not d.leased or d.due_at <= now)
        ]
        expired.sort(key=lambda d: (d.expires_at, d.id))
        return [self._take(d, now + EXPIRE_LEASE) for d in expired[: max(limit, 0)]]

    async def counts(self) -> Counts:
        k = self._counters
        c = Counts(delivered=k["delivered"], bounced=k["bounced"], expired=k["expired"])
        c.dropped = k["dropped"]
        for d in self._deliveries.values():
            if d.leased:
                c.inflight += 1
            elif d.attempts:
                c.deferred += 1
            else:
                c.queued += 1
            c.by_domain[d.domain] = c.by_domain.get(d.domain, 0) + 1
        c.bodies, c.messages, c.events = len(self._bodies), len(self._messages), len(self._events)
        return c

    # -- EventLog ------------------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        start = bisect.bisect_right(self._events, after, key=lambda item: item[0])
        return self._events[start : start + max(limit, 0)]

    async def committed(self, consumer: str) -> int:
        return self._consumers.get(consumer, 0)

    async def commit(self, consumer: str, offset: int) -> None:
        self._consumers[consumer] = offset

    async def head(self) -> int:
        return self._appended

    async def prune(self, upto: int, before: float, limit: int) -> int:
        gone = [o for o, e in self._events if o <= upto and e.ts < before][: max(limit, 0)]
        drop = set(gone)
        self._events = [item for item in self._events if item[0] not in drop]
        return len(gone)

    # -- suppressions --------------------------------------------------------------------

    async def suppressed(
        self, tenant: str, emails: Sequence[str], groups: Sequence[int] = ()
    ) -> dict[str, str]:
        missing = [g for g in groups if (tenant, g) not in self.asm_members]
        if missing:
            raise UnknownGroups(missing)
        members = self.asm_members[(tenant, groups[0])] if groups else set()
        out: dict[str, str] = {}
        for email in {email_key(e) for e in emails}:
            if email in members:
                out[email] = GROUP_DROP_REASON
            for list_name, reason in DROP_REASONS.items():
                if (tenant, email, list_name) in self._suppressions:
                    out[email] = reason
                    break
        return out

    async def add_suppression(
        self,
        tenant: str,
        list_name: str,
        email: str,
        *,
        reason: str = "",
        status: str = "",
        created: float | None = None,
    ) -> None:
        when = time.time() if created is None else created
        self._suppressions[(tenant, email_key(email), list_name)] = (when, reason, status)

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None:
        self._check()
        self._append(events)
        for x in suppressions:
            entry = (x.created, x.reason, x.status)
            self._suppressions[(x.tenant, email_key(x.email), x.list_name)] = entry

    async def close(self) -> None:
        pass

    # -- helpers -------------------------------------------------------------------------

    def _check(self) -> None:
        if self.unavailable is not None:
            raise SpoolUnavailable(self.unavailable)

    def _append(self, events: Sequence[EventRecord]) -> None:
        for e in events:
            self._appended += 1
            self._events.append((self._appended, e))

    def _take(self, d: _Delivery, until: float) -> Lease:
        d.due_at, d.leased = until, True
        sg_id = self._messages[d.message_id].stored.sg_message_id
        return Lease(
            d.id, d.message_id, d.tenant, d.rcpt, d.domain, d.attempts, d.created_at,
            d.expires_at, sg_id,
        )  # fmt: skip

    def _release_message(self, message_id: int) -> None:
        m = self._messages[message_id]
        m.pending -= 1
        if m.pending > 0:
            return
        del self._messages[message_id]
        data, refs = self._bodies[m.body_id]
        if refs > 1:
            self._bodies[m.body_id] = (data, refs - 1)
        else:
            del self._bodies[m.body_id]


def _read_body_file(body_file: BodyFile) -> bytes:
    try:
        with open(body_file.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"body file {body_file.path}: {exc.strerror or exc}") from exc
    if len(data) != body_file.size:
        raise ValueError(f"body file {body_file.path}: {len(data)} octets, not {body_file.size}")
    return data
