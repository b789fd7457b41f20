"""The conformance suite every Spool + EventLog backend passes (memory, SQLite, JetStream).

Each check is an ``async`` function of a fresh, empty spool; it raises AssertionError on a
deviation. Checks run on virtual time (``T0`` and offsets from it) and never sleep. Run
them with :func:`run` and a factory, e.g. with pytest::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.name)
    def test_spool(check):
        conformance.run(make_spool, check)

``SUPPRESSION_CHECKS`` additionally need ``suppressed`` / ``add_suppression``. The body
file checks write their files into a temporary directory of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from postline.events.log import EventLog
from postline.model import events as ev
from postline.model.events import EventRecord
from postline.spool.interface import (
    AcceptBatch,
    BodyFile,
    Lease,
    NewMessage,
    QueueInfo,
    Settle,
    Settlement,
    Spool,
    Suppression,
)

T0 = 1_700_000_000.0  # virtual "now" of every check
LEASE = 30.0
MAX_AGE = 3600.0


class SpoolUnderTest(Spool, EventLog, Protocol):
    async def next_due(self, tenant: str, domain: str) -> float | None: ...

    async def close(self) -> None: ...


class SuppressingSpool(SpoolUnderTest, Protocol):
    async def suppressed(self, tenant: str, emails: Sequence[str]) -> dict[str, str]: ...

    async def add_suppression(
        self,
        tenant: str,
        list_name: str,
        email: str,
        *,
        reason: str = "",
        status: str = "",
        created: float | None = None,
    ) -> None: ...

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None: ...


S = TypeVar("S", bound=SpoolUnderTest)
Check = Callable[[S], Awaitable[None]]


def run(factory: Callable[[], Awaitable[S]], check: Check[S]) -> None:
    """Run one check on a fresh spool from ``factory`` and close the spool afterwards."""

    async def main() -> None:
        spool = await factory()
        try:
            await check(spool)
        finally:
            await spool.close()

    asyncio.run(main())


def name(check: Callable[..., Any]) -> str:
    return check.__name__.removeprefix("check_")


# -- building blocks ---------------------------------------------------------------------

_serial = itertools.count(1)


def message(*recipients: str, due_at: float = T0) -> NewMessage:
    n = next(_serial)
    return NewMessage(f"msg{n}.pl1.0", f"<msg{n}.0@test>", b"pers-%d" % n, list(recipients), due_at)


def batch(
    *messages: NewMessage, tenant: str = "t1", body: bytes = b"body", created_at: float = T0
) -> AcceptBatch:
    events = [
        event(ev.PROCESSED, tenant, r, created_at, m.sg_message_id, m.smtp_id)
        for m in messages
        for r in m.recipients
    ]
    return AcceptBatch(tenant, body, list(messages), events, created_at, created_at + MAX_AGE)


def file_batch(path: str, size: int, *messages: NewMessage, tenant: str = "t1") -> AcceptBatch:
    """A batch whose body is the file at ``path`` (``size`` octets, as the caller says)."""
    b = batch(*messages, tenant=tenant, body=b"")
    b.body_file = BodyFile(path, size)
    return b


def pattern(size: int) -> bytes:
    """``size`` octets of every value, with a period (251) that no power of two divides:
    a chunk copied twice, left out or out of order shows."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def write_file(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def event(
    kind: str, tenant: str, email: str, ts: float, sg_id: str, smtp_id: str = ""
) -> EventRecord:
    return ev.make_event(
        kind, tenant=tenant, email=email, ts=ts, sg_message_id=sg_id, smtp_id=smtp_id
    )


def outcome(lease: Lease, settlement: Settlement, ts: float = T0, retry_at: float = 0.0) -> Settle:
    kind = {Settlement.DELIVERED: ev.DELIVERED, Settlement.DEFERRED: ev.DEFERRED}.get(
        settlement, ev.BOUNCE
    )
    record = event(kind, lease.tenant, lease.rcpt, ts, lease.sg_message_id)
    return Settle(lease, settlement, record, retry_at)


def _eq(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


async def _states(spool: Spool) -> tuple[int, int, int]:
    c = await spool.counts()
    return c.queued, c.deferred, c.inflight


# -- the checks --------------------------------------------------------------------------


async def check_lease_returns_the_queue(spool: SpoolUnderTest) -> None:
    m1, m2 = message("a1@a.example", "a2@A.Example"), message("b1@b.example")
    await spool.accept(batch(m1, m2))
    await spool.accept(batch(message("a3@a.example"), tenant="t2"))
    leases = await spool.lease("t1", "a.example", T0, 10, LEASE)
    _eq(sorted(x.rcpt for x in leases), ["a1@a.example", "a2@A.Example"], "rcpts leased")
    for x in leases:
        _eq((x.tenant, x.domain, x.attempts), ("t1", "a.example", 0), "lease fields")
        _eq((x.created_at, x.expires_at), (T0, T0 + MAX_AGE), "lease times")
        _eq(x.sg_message_id, m1.sg_message_id, "lease sg_message_id")
    _eq(len({x.message_id for x in leases}), 1, "one message for both recipients")
    _eq(len({x.delivery_id for x in leases}), 2, "one delivery per recipient")
    _eq(await spool.lease("t1", "a.example", T0, 10, LEASE), [], "leased twice")
    _eq(len(await spool.lease("t1", "b.example", T0, 10, LEASE)), 1, "other domain")
    _eq(len(await spool.lease("t2", "a.example", T0, 10, LEASE)), 1, "other tenant")
    _eq(await spool.lease("t1", "c.example", T0, 10, LEASE), [], "empty queue")
    _eq(await _states(spool), (0, 0, 4), "queued, deferred, inflight")


async def check_due_time_is_respected(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("later@d.example", due_at=T0 + 100)))
    _eq(await spool.lease("t1", "d.example", T0, 10, LEASE), [], "lease before send_at")
    _eq(await spool.lease("t1", "d.example", T0 + 99.5, 10, LEASE), [], "just before")
    _eq(len(await spool.lease("t1", "d.example", T0 + 100, 10, LEASE)), 1, "lease at send_at")


async def check_lease_takes_earliest_first_up_to_limit(spool: SpoolUnderTest) -> None:
    dues = [T0 + 3, T0 + 1, T0 + 2]
    await spool.accept(batch(*(message(f"r{i}@d.example", due_at=d) for i, d in enumerate(dues))))
    got = await spool.lease("t1", "d.example", T0 + 10, 2, LEASE)
    _eq([x.rcpt for x in got], ["r1@d.example", "r2@d.example"], "earliest due first")
    _eq(await spool.lease("t1", "d.example", T0 + 10, 0, LEASE), [], "limit 0")


async def check_unsettled_lease_comes_back(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("r@d.example")))
    (first,) = await spool.lease("t1", "d.example", T0, 10, LEASE)
    _eq(await spool.lease("t1", "d.example", T0 + LEASE - 1, 10, LEASE), [], "within timeout")
    again = await spool.lease("t1", "d.example", T0 + LEASE, 10, LEASE)
    _eq([(x.delivery_id, x.attempts) for x in again], [(first.delivery_id, 0)], "after timeout")


async def check_delivered_is_removed_and_counted(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("r@d.example")))
    (lease,) = await spool.lease("t1", "d.example", T0, 10, LEASE)
    await spool.settle([outcome(lease, Settlement.DELIVERED)])
    c = await spool.counts()
    _eq((c.queued, c.deferred, c.inflight, c.delivered), (0, 0, 0, 1), "counts")
    _eq((c.messages, c.bodies), (0, 0), "message and body removed")
    _eq(await spool.lease("t1", "d.example", T0 + 10 * MAX_AGE, 10, LEASE), [], "lease")
    _eq(await spool.queues(T0), [], "queues")


async def check_deferred_comes_back_at_retry_at(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("r@d.example")))
    (lease,) = await spool.lease("t1", "d.example", T0, 10, LEASE)
    await spool.settle([outcome(lease, Settlement.DEFERRED, retry_at=T0 + 300)])
    _eq(await _states(spool), (0, 1, 0), "queued, deferred, inflight")
    _eq(await spool.lease("t1", "d.example", T0 + 299, 10, LEASE), [], "before retry_at")
    (second,) = await spool.lease("t1", "d.example", T0 + 300, 10, LEASE)
    _eq((second.delivery_id, second.attempts), (lease.delivery_id, 1), "attempts + 1")
    await spool.settle([outcome(second, Settlement.DEFERRED, retry_at=T0 + 900)])
    (third,) = await spool.lease("t1", "d.example", T0 + 900, 10, LEASE)
    _eq(third.attempts, 2, "attempts after two deferrals")


async def check_release_makes_due_without_attempt(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("r@d.example")))
    leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
    await spool.release(leases, T0 + 5)
    _eq(await _states(spool), (1, 0, 0), "queued, deferred, inflight")
    _eq(await spool.lease("t1", "d.example", T0 + 4, 10, LEASE), [], "before due_at")
    (again,) = await spool.lease("t1", "d.example", T0 + 5, 10, LEASE)
    _eq(again.attempts, 0, "attempts unchanged")


async def check_body_is_stored_once_and_removed_last(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(*(message(f"r{i}@d.example") for i in range(100)), body=b"x" * 5000))
    c = await spool.counts()
    _eq((c.bodies, c.messages, c.queued), (1, 100, 100), "bodies, messages, queued")
    leases = await spool.lease("t1", "d.example", T0, 1000, LEASE)
    _eq(len(leases), 100, "leased")
    await spool.settle([outcome(x, Settlement.DELIVERED) for x in leases[:99]])
    c = await spool.counts()
    _eq((c.bodies, c.messages, c.delivered), (1, 1, 99), "after 99 settles")
    (last,) = await spool.load([leases[99].message_id])
    _eq(last.body, b"x" * 5000, "body of the last message")
    await spool.settle([outcome(leases[99], Settlement.BOUNCED)])
    c = await spool.counts()
    _eq((c.bodies, c.messages, c.delivered, c.bounced), (0, 0, 99, 1), "after the last")


async def check_message_stays_until_every_recipient_settles(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("a@d.example", "b@d.example", "c@d.example")))
    a, b, c = await spool.lease("t1", "d.example", T0, 10, LEASE)
    await spool.settle(
        [outcome(a, Settlement.DELIVERED), outcome(b, Settlement.DEFERRED, retry_at=T0 + 60)]
    )
    _eq(len(await spool.load([c.message_id])), 1, "message loadable while pending")
    await spool.settle([outcome(c, Settlement.BOUNCED)])
    (b2,) = await spool.lease("t1", "d.example", T0 + 60, 10, LEASE)
    await spool.settle([outcome(b2, Settlement.EXPIRED)])
    counts = await spool.counts()
    _eq((counts.delivered, counts.bounced, counts.expired), (1, 1, 1), "terminal counters")
    _eq((counts.messages, counts.bodies), (0, 0), "message and body gone")


async def check_load_returns_body_and_personalization(spool: SpoolUnderTest) -> None:
    m1, m2 = message("a@d.example"), message("b@e.example")
    await spool.accept(batch(m1, m2, body=b"shared body", tenant="t9"))
    ids = {
        x.sg_message_id: x.message_id
        for dom in ("d.example", "e.example")
        for x in await spool.lease("t9", dom, T0, 10, LEASE)
    }
    loaded = await spool.load([ids[m2.sg_message_id], 987654321, ids[m1.sg_message_id]])
    _eq([x.sg_message_id for x in loaded], [m2.sg_message_id, m1.sg_message_id], "order")
    for x, m in zip(loaded, (m2, m1), strict=True):
        _eq((x.smtp_id, x.tenant, x.body), (m.smtp_id, "t9", b"shared body"), "fields")
        _eq(x.personalization, m.personalization, "personalization")
    _eq(await spool.load([]), [], "load of nothing")


async def check_body_file_is_stored_byte_for_byte(spool: SpoolUnderTest) -> None:
    data = pattern(5 * 2**19 + 7)  # 2.5 MiB + 7: several chunks of any size up to 1 MiB
    with tempfile.TemporaryDirectory() as tmp:
        shared = [message(f"r{i}@d.example") for i in range(3)]
        await spool.accept(file_batch(write_file(tmp, "body", data), len(data), *shared))
        await spool.accept(file_batch(write_file(tmp, "empty", b""), 0, message("e@e.example")))
    # the files are gone (their owner removes them once accept returned): the spool has its copy
    leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
    loaded = await spool.load([x.message_id for x in leases])
    _eq(sorted(m.sg_message_id for m in loaded), sorted(m.sg_message_id for m in shared), "load")
    for m in loaded:
        if m.body != data:
            raise AssertionError(f"body of {m.sg_message_id}: {len(m.body)} octets differ")
    (empty,) = await spool.lease("t1", "e.example", T0, 10, LEASE)
    _eq([m.body for m in await spool.load([empty.message_id])], [b""], "empty body file")
    c = await spool.counts()
    _eq((c.bodies, c.messages, c.queued + c.inflight), (2, 4, 4), "bodies, messages, deliveries")
    await spool.settle([outcome(x, Settlement.DELIVERED) for x in [*leases, empty]])
    c = await spool.counts()
    _eq((c.bodies, c.messages, c.delivered), (0, 0, 4), "after delivery")


async def check_bad_body_file_stores_nothing(spool: SpoolUnderTest) -> None:
    """Missing, not a file, shorter or longer than said: ValueError, nothing of the batch
    stored, the spool goes on (and batches accepted at the same time land)."""
    await spool.accept(batch(message("first@d.example")))
    before, events = await spool.counts(), await spool.read(0, 100)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_file(tmp, "body", pattern(1000))
        bad = [(os.path.join(tmp, "missing"), 1000), (tmp, 0), (path, 1001), (path, 999)]
        for where, size in bad:
            try:
                await spool.accept(file_batch(where, size, message("bad@d.example")))
            except ValueError:
                pass
            else:
                raise AssertionError(f"accepted a bad body file: {where}, {size} octets")
        _eq(await spool.counts(), before, "counts after bad body files")
        _eq(await spool.read(0, 100), events, "events after bad body files")
        together = [
            file_batch(path, 1000, message("good1@d.example")),
            file_batch(path, 999, message("bad@d.example")),
            batch(message("good2@d.example")),
        ]
        got = await asyncio.gather(*map(spool.accept, together), return_exceptions=True)
    _eq([type(x).__name__ for x in got], ["NoneType", "ValueError", "NoneType"], "together")
    after = await spool.counts()
    _eq((after.queued, after.messages), (before.queued + 2, before.messages + 2), "the good ones")


async def check_queues_lists_non_empty_queues(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("a@a.example", "b@a.example", due_at=T0 + 5)))
    await spool.accept(batch(message("c@b.example")))
    await spool.accept(batch(message("d@a.example", due_at=T0 + 1), tenant="t2"))
    want = {
        QueueInfo("t1", "a.example", T0 + 5, 2),
        QueueInfo("t1", "b.example", T0, 1),
        QueueInfo("t2", "a.example", T0 + 1, 1),
    }
    got = await spool.queues(T0)
    _eq(set(got), want, "queues")
    _eq(len(got), 3, "no duplicates")


async def check_next_due_of_a_queue(spool: SpoolUnderTest) -> None:
    _eq(await spool.next_due("t1", "d.example"), None, "empty queue")
    await spool.accept(batch(message("a@d.example", due_at=T0 + 50)))
    await spool.accept(batch(message("b@d.example", due_at=T0 + 20)))
    await spool.accept(batch(message("c@e.example", due_at=T0 + 10)))
    _eq(await spool.next_due("t1", "d.example"), T0 + 20, "earliest due of the queue")
    await spool.lease("t1", "d.example", T0 + 20, 10, 100)
    _eq(await spool.next_due("t1", "d.example"), T0 + 50, "a lease counts from its end")
    _eq(await spool.next_due("t2", "d.example"), None, "other tenant")


async def check_expire_hands_out_expired_deliveries(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("old1@d.example", "old2@d.example")))
    await spool.accept(batch(message("new@d.example"), created_at=T0 + 1000))
    now = T0 + MAX_AGE
    _eq(await spool.expire(now - 1, 10), [], "nothing expired yet")
    old = await spool.expire(now, 1)
    _eq([x.rcpt for x in old], ["old1@d.example"], "limit")
    old += await spool.expire(now, 10)
    _eq([x.rcpt for x in old], ["old1@d.example", "old2@d.example"], "the rest, once")
    _eq(await spool.expire(now, 10), [], "expired leases are not handed out twice")
    await spool.settle([outcome(x, Settlement.EXPIRED) for x in old])
    # a live lease is left to its holder; once it times out, expire takes it
    (new,) = await spool.lease("t1", "d.example", now + 999, 10, LEASE)
    _eq(new.rcpt, "new@d.example", "the new one leased for delivery")
    _eq(await spool.expire(now + 1000, 10), [], "live lease not expired")
    (late,) = await spool.expire(now + 999 + LEASE, 10)
    await spool.settle([outcome(late, Settlement.EXPIRED)])
    c = await spool.counts()
    _eq((c.expired, c.queued + c.deferred + c.inflight, c.messages), (3, 0, 0), "counts")


async def check_events_are_appended_with_increasing_offsets(spool: SpoolUnderTest) -> None:
    b = batch(message("a@d.example", "b@d.example"), message("c@d.example"))
    await spool.accept(b)
    got = await spool.read(0, 100)
    _eq([rec for _, rec in got], b.events, "accept's events in order")
    offsets = [off for off, _ in got]
    _eq(offsets, sorted(set(offsets)), "offsets strictly increasing")
    _eq(await spool.read(offsets[0], 1), [got[1]], "read after an offset, limited")
    leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
    settle = outcome(leases[0], Settlement.DELIVERED, ts=T0 + 1)
    await spool.settle([settle])
    after = await spool.read(offsets[-1], 100)
    _eq([rec for _, rec in after], [settle.event], "settle's event appended")
    _eq(after[0][0] > offsets[-1], True, "new offset above the old ones")
    _eq((await spool.counts()).events, 4, "events counted")


async def check_consumer_offsets(spool: SpoolUnderTest) -> None:
    _eq(await spool.committed("webhooks"), 0, "no offset yet")
    await spool.commit("webhooks", 5)
    await spool.commit("stats", 7)
    _eq(await spool.committed("webhooks"), 5, "webhooks")
    await spool.commit("webhooks", 9)
    _eq((await spool.committed("webhooks"), await spool.committed("stats")), (9, 7), "both")


async def check_event_meta_head_and_prune(spool: SpoolUnderTest) -> None:
    meta = ev.message_meta("from@d.example", "Hello")
    old = [
        ev.make_event(
            ev.PROCESSED,
            tenant="t1",
            email=f"r{i}@d.example",
            ts=T0 + i,
            sg_message_id=f"m{i}.pl1.0",
            smtp_id="",
            meta=meta,
        )
        for i in range(4)
    ]
    await spool.accept(AcceptBatch("t1", b"body", [], old, T0, T0 + MAX_AGE))
    got = await spool.read(0, 10)
    _eq([rec for _, rec in got], old, "events come back with their meta")
    offsets = [off for off, _ in got]
    _eq(await spool.head(), offsets[-1], "head is the newest offset")
    # consumed up to the third, older than T0 + 2: only the first two may go
    _eq(await spool.prune(offsets[2], T0 + 2, 10), 2, "pruned by offset and age")
    _eq([off for off, _ in await spool.read(0, 10)], offsets[2:], "the rest stays in order")
    _eq(await spool.prune(offsets[-1], T0 + 10, 1), 1, "at most limit")
    _eq(await spool.prune(offsets[-1], T0 + 10, 10), 1, "then the last")
    _eq(await spool.head(), offsets[-1], "head does not move back when the log is empty")
    await spool.accept(AcceptBatch("t1", b"body", [], old[:1], T0, T0 + MAX_AGE))
    _eq((await spool.read(0, 10))[0][0] > offsets[-1], True, "offsets are never reused")


async def check_dropped_only_batch_stores_events(spool: SpoolUnderTest) -> None:
    events = [event(ev.DROPPED, "t1", e, T0, "x.pl1.0") for e in ("a@d.example", "b@d.example")]
    await spool.accept(AcceptBatch("t1", b"body", [], events, T0, T0 + MAX_AGE))
    c = await spool.counts()
    _eq((c.dropped, c.events, c.bodies, c.messages, c.queued), (2, 2, 0, 0, 0), "counts")


async def check_settling_twice_changes_nothing(spool: SpoolUnderTest) -> None:
    await spool.accept(batch(message("r@d.example", "s@d.example")))
    first, _ = await spool.lease("t1", "d.example", T0, 10, LEASE)
    await spool.settle([outcome(first, Settlement.DELIVERED)])
    before = await spool.counts()
    await spool.settle([outcome(first, Settlement.DELIVERED)])
    await spool.settle([outcome(first, Settlement.DEFERRED, retry_at=T0)])
    after = await spool.counts()
    _eq((after.delivered, after.events, after.messages), (1, before.events, 1), "counts")


async def check_concurrent_accepts_all_land(spool: SpoolUnderTest) -> None:
    await asyncio.gather(*(spool.accept(batch(message(f"r{i}@d.example"))) for i in range(50)))
    c = await spool.counts()
    _eq((c.queued, c.messages, c.bodies, c.events), (50, 50, 50, 50), "counts")
    _eq(c.by_domain.get("d.example", 50), 50, "by_domain, when filled")
    _eq(len({off for off, _ in await spool.read(0, 1000)}), 50, "distinct offsets")


async def check_suppressions_drop_reasons(spool: SuppressingSpool) -> None:
    await spool.add_suppression(
        "t1", "bounces", "Bob@X.example", reason="550 5.1.1", status="5.1.1"
    )
    await spool.add_suppression("t1", "blocks", "carol@x.example", reason="550 blocked")
    await spool.add_suppression("t1", "unsubscribes", "dave@x.example")
    got = await spool.suppressed(
        "t1", ["BOB@x.example", "carol@x.example", "dave@X.example", "e@x"]
    )
    _eq(got, {"bob@x.example": "Bounced Address", "dave@x.example": "Unsubscribed Address"}, "t1")
    _eq(await spool.suppressed("t2", ["bob@x.example"]), {}, "other tenant")
    _eq(await spool.suppressed("t1", []), {}, "no emails")


async def check_bounce_settle_suppresses(spool: SuppressingSpool) -> None:
    await spool.accept(batch(message("Gone@D.example")))
    (lease,) = await spool.lease("t1", "d.example", T0, 10, LEASE)
    settle = outcome(lease, Settlement.BOUNCED)
    settle.suppress = ("bounces", "550 5.1.1 no such user", "5.1.1")
    await spool.settle([settle])
    _eq(await spool.suppressed("t1", ["gone@d.example"]), {"gone@d.example": "Bounced Address"}, "")


async def check_record_appends_events_and_suppresses(spool: SuppressingSpool) -> None:
    """An asynchronous bounce: the message may be gone; the event and the list entry land."""
    before = await spool.read(0, 100)
    bounce = event(ev.BOUNCE, "t1", "Late@D.example", T0, "x.pl1.0")
    complaint = event("spamreport", "t1", "carol@d.example", T0, "y.pl1.0")
    await spool.record(
        [bounce, complaint],
        [
            Suppression("t1", "bounces", "Late@D.example", "550 5.1.1 gone", "5.1.1", T0),
            Suppression("t1", "spam_reports", "carol@d.example", created=T0),
        ],
    )
    got = [rec for _, rec in await spool.read(0, 100)]
    _eq(got[len(before) :], [bounce, complaint], "events")
    expected = {"late@d.example": "Bounced Address", "carol@d.example": "Spam Reporting Address"}
    _eq(await spool.suppressed("t1", ["late@d.example", "carol@d.example"]), expected, "lists")
    _eq(await spool.suppressed("t2", ["late@d.example"]), {}, "other tenant")


CHECKS: list[Check[SpoolUnderTest]] = [
    check_lease_returns_the_queue,
    check_due_time_is_respected,
    check_lease_takes_earliest_first_up_to_limit,
    check_unsettled_lease_comes_back,
    check_delivered_is_removed_and_counted,
    check_deferred_comes_back_at_retry_at,
    check_release_makes_due_without_attempt,
    check_body_is_stored_once_and_removed_last,
    check_message_stays_until_every_recipient_settles,
    check_load_returns_body_and_personalization,
    check_body_file_is_stored_byte_for_byte,
    check_bad_body_file_stores_nothing,
    check_queues_lists_non_empty_queues,
    check_next_due_of_a_queue,
    check_expire_hands_out_expired_deliveries,
    check_events_are_appended_with_increasing_offsets,
    check_consumer_offsets,
    check_event_meta_head_and_prune,
    check_dropped_only_batch_stores_events,
    check_settling_twice_changes_nothing,
    check_concurrent_accepts_all_land,
]


async def check_accept_drops_suppressed_in_its_transaction(spool: SuppressingSpool) -> None:
    """``drop_suppressed``: the spool drops listed recipients itself and says so in the
    batch (the SMTP relay's one-trip accept, spool/drops.py)."""
    await spool.add_suppression("t1", "bounces", "gone@d.example")
    await spool.add_suppression("t1", "blocks", "blocked@d.example")  # still sent to
    await spool.add_suppression("t2", "bounces", "ok@d.example")  # another tenant's list
    both, alone = (
        message("Gone@D.example", "ok@d.example", "blocked@d.example"),
        message("gone@d.example"),
    )
    b = batch(both, alone)
    b.drop_suppressed = True
    await spool.accept(b)
    _eq([m.recipients for m in b.messages], [["ok@d.example", "blocked@d.example"]], "kept")
    kinds = [(e.event, e.email) for e in b.events]
    expected = [
        ("dropped", "Gone@D.example"),
        ("processed", "ok@d.example"),
        ("processed", "blocked@d.example"),
        ("dropped", "gone@d.example"),
    ]
    _eq(kinds, expected, "events")
    dropped = json.loads(b.events[0].data)
    _eq((dropped["event"], dropped["reason"], dropped["status"]),
        ("dropped", "Bounced Address", "5.0.0"), "dropped event")  # fmt: skip
    _eq("send_at" in dropped, False, "send_at left on a dropped event")
    stored = [rec for _, rec in await spool.read(0, 100)]
    _eq(stored, b.events, "stored events are the batch's")
    leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
    _eq(sorted(x.rcpt for x in leases), ["blocked@d.example", "ok@d.example"], "deliveries")
    c = await spool.counts()
    _eq((c.messages, c.dropped), (1, 2), "messages, dropped")


SUPPRESSION_CHECKS: list[Check[SuppressingSpool]] = [
    check_accept_drops_suppressed_in_its_transaction,
    check_suppressions_drop_reasons,
    check_bounce_settle_suppresses,
    check_record_appends_events_and_suppresses,
]
