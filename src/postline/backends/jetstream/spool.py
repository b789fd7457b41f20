"""The Spool + EventLog on NATS JetStream (cluster mode). Passes spool/conformance.CHECKS.

How each call maps (records.py has the streams and subjects):

* ``accept``: body (inline message or Object Store), message records, one message per
  delivery and the batch's events (events.py), all with ``publish_async`` and content- or
  id-derived ``Nats-Msg-Id``; returns when every PubAck is back, i.e. stored with the
  stream's replicas. Not atomic: a failure part-way raises SpoolUnavailable and may leave
  some deliveries of the batch stored (the client's retry can then duplicate them; never a
  loss).
* ``lease``: the due deliveries of the queue, earliest first, each taken with a
  compare-and-set write (``Nats-Expected-Last-Subject-Sequence``) of ``leased, due_at =
  now + lease_for``: two nodes never both win a delivery, and a lease nobody settles is
  due again at ``due_at`` for any node (the visibility timeout). This is deliberately
  not a pull consumer with ``ack_wait``/``nak(delay)``: the server's redelivery timers run
  on the server's clock, while the Spool contract (and its conformance suite, on virtual
  time) makes every due time a value the caller chose; with timers in the server,
  ``release(due_at)``, ``settle(retry_at)``, ``send_at``, ``next_due`` and ``queues`` could
  not be answered or tested. Nothing polls: the scheduler arms each queue on ``next_due``.
* ``settle``: the events first (one batched message), then per delivery a CAS write: a
  tombstone (terminal) or ``attempts + 1, due_at = retry_at`` (deferred). A message and
  its body are tombstoned when this node sees no live delivery of them left. A CAS that
  finds another sequence re-reads the delivery: settled elsewhere means nothing changes.
* ``release``: CAS write ``due_at``, not leased, attempts unchanged.
* ``load``: message record and body by subject (``last_by_subj``).
* ``queues``, ``next_due``, ``counts``, ``expire``: from this node's index of the SPOOL
  stream (index.py), which an ordered consumer keeps current with every node's writes.
  Outcome counters are per node (counters.py: KV ``counts.<incarnation>``, written at
  most once a second and at close) and summed by ``counts``: a crash loses up to a
  second of them.
* Suppressions live in PostgreSQL (``suppressions=``, a PostgresSuppressions the spool
  closes at ``close``): ``suppressed``, ``add_suppression``, ``record``'s lists, a
  settle's ``suppress`` and ``drop_suppressed`` go there; lists.py says in which order
  the two systems are written and why nothing is lost. Without a store they raise
  NotImplementedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from postline.backends.jetstream.bodies import Bodies, check_file, read_small
from postline.backends.jetstream.connect import close as close_connection
from postline.backends.jetstream.connect import connect
from postline.backends.jetstream.counters import OutcomeCounters
from postline.backends.jetstream.cursors import Cursors
from postline.backends.jetstream.events import JetStreamEventLog
from postline.backends.jetstream.index import Entry, Index, follow_deliveries, writer_of
from postline.backends.jetstream.lists import SuppressionCalls
from postline.backends.jetstream.publish import Conflict, Out, Publisher
from postline.backends.jetstream.records import (
    GONE,
    INLINE_MAX,
    DeliveryState,
    Ids,
    MessageRecord,
    Names,
    decode_message,
    encode,
)
from postline.backends.jetstream.setup import ensure_all, incarnation
from postline.backends.jetstream.writes import MSG_ID, DeliveryWrites
from postline.backends.postgres.suppressions import PostgresSuppressions
from postline.model.domain import domain_key
from postline.model.events import DROPPED, EventRecord
from postline.spool.interface import (
    EXPIRE_LEASE,
    AcceptBatch,
    Counts,
    Lease,
    QueueInfo,
    Settle,
    Settlement,
    StoredMessage,
    Suppression,
)
from postline.tasks import cancel_and_wait


async def open_jetstream_spool(
    servers: list[str],
    *,
    replicas: int,
    prefix: str = "PL",
    max_age: float = 7 * 86400.0,
    max_in_flight: int = 4000,
    timeout: float = 5.0,
    suppressions: PostgresSuppressions | None = None,
) -> JetStreamSpool:
    """Connect, create or check the streams, load the index. ``suppressions`` passes to
    the spool (closed by its ``close``; if opening fails the caller still owns it)."""
    nc = await connect(servers)  # connect.py: random server order, fast reconnect
    js = nc.jetstream(timeout=timeout, publish_async_max_pending=max_in_flight)
    names = Names(prefix)
    try:
        kv, obs = await ensure_all(js, names, replicas, max_age)
        log = JetStreamEventLog(js, kv, names, Publisher(js, timeout), Cursors(nc, js, names))
        spool = JetStreamSpool(nc, kv, Bodies(js, obs, names), log, await incarnation(kv))
        spool._lists = suppressions
        await log.pub.prepare()  # before the index loads: the reply inbox is known everywhere
        await spool._watch()
    except BaseException:
        await nc.close()
        raise
    return spool


class JetStreamSpool(SuppressionCalls):
    def __init__(
        self, nc: Client, kv: KeyValue, bodies: Bodies, log: JetStreamEventLog, incarnation: int
    ) -> None:
        self._nc, self._kv, self._bodies, self.log = nc, kv, bodies, log
        self._js, self._names, self._pub = log.js, log.names, log.pub
        self._ids = Ids(incarnation)
        self._node = str(incarnation)
        self.index = Index()
        self.writes = DeliveryWrites(log.pub, log.js, log.names, self.index, self._node)
        self.counters = OutcomeCounters(kv, self._node)
        self._count = self.counters.add
        self._tasks: list[asyncio.Task[None]] = []
        self._seen = 0
        self._lists: PostgresSuppressions | None = None

    # -- Spool ---------------------------------------------------------------------------

    async def accept(self, batch: AcceptBatch) -> None:
        if batch.drop_suppressed:  # one lookup in PostgreSQL, then the writes (lists.py)
            await self._drop_suppressed(batch)
        kept = [m for m in batch.messages if m.recipients]
        body_id, outs, large = self._ids.next(), [], False
        if kept:
            if batch.body_file is not None:
                check_file(batch.body_file)
                large = batch.body_file.size > INLINE_MAX
                if large:
                    await self._bodies.put_large(body_id, batch.body_file)
                else:
                    outs.append(self._bodies.inline(body_id, read_small(batch.body_file)))
            elif len(batch.body) > INLINE_MAX:
                large = True
                await self._bodies.put_large(body_id, batch.body)
            else:
                outs.append(self._bodies.inline(body_id, batch.body))
        states: list[DeliveryState] = []
        for m in kept:
            mid = self._ids.next()
            rec = MessageRecord(
                mid, body_id, large, m.sg_message_id, m.smtp_id, batch.tenant, m.personalization
            )
            outs.append(Out(self._names.message(mid), encode(rec), f"m{mid}"))
            for rcpt in m.recipients:
                states.append(DeliveryState(
                    self._ids.next(), mid, body_id, batch.tenant, rcpt, domain_key(rcpt),
                    m.due_at, batch.expires_at, batch.created_at, 0, False, m.sg_message_id,
                ))  # fmt: skip
        await self._pub.put_all(outs)  # body and messages before anything points at them
        subjects = [self._subject(s) for s in states]
        outs = [
            Out(subj, encode(s), f"d{s.delivery_id}")
            for subj, s in zip(subjects, states, strict=True)
        ]
        seqs, _ = await asyncio.gather(self._pub.put_all(outs), self.log.append(batch.events))
        for s, subj, seq in zip(states, subjects, seqs, strict=True):
            self.index.apply(s.delivery_id, seq, subj, s, self._node)
        self._count("dropped", sum(1 for e in batch.events if e.event == DROPPED))
        self._count("events", len(batch.events))

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        """The earliest due first (the index's heap of the queue); a delivery another node
        took or changed meanwhile (a CAS conflict) is passed over for the next one."""
        domain = domain.lower()
        taken: list[Lease] = []
        tried: set[int] = set()
        while len(taken) < limit:
            entries = self.index.due(tenant, domain, now, limit - len(taken), skip=tried)
            if not entries:
                break
            tried.update(e.state.delivery_id for e in entries)
            taken += await self._take(entries, limit - len(taken), now + lease_for)
        return taken

    async def settle(self, settles: Sequence[Settle]) -> None:
        todo = [(s, e) for s in settles if (e := self.index.get(s.lease.delivery_id))]
        await self._suppress_settled([s for s, _ in todo])  # before the tombstones (lists.py)
        await self.log.append([s.event for s, _ in todo if s.event is not None])
        self._count("events", sum(1 for s, _ in todo if s.event is not None))
        results = await self._settle_all(todo)
        messages = {
            e.state.message_id: e.state for (_, e), ok in zip(todo, results, strict=True) if ok
        }
        gone = [s for mid, s in messages.items() if mid not in self.index.message_refs]
        outs = [Out(self._names.message(s.message_id), b"", f"gm{s.message_id}", ((GONE, "1"),))
                for s in gone]  # fmt: skip
        bodies = {s.body_id for s in gone if s.body_id not in self.index.body_refs}
        outs += [self._bodies.tombstone(b) for b in bodies]
        await self._pub.put_all(outs)
        for b in bodies:
            await self._bodies.delete_large(b)  # most bodies are inline: a quick "not found"

    async def release(self, leases: Sequence[Lease], due_at: float) -> None:
        changes = [
            (e, msgspec.structs.replace(e.state, due_at=due_at, leased=False))
            for lease in leases
            if (e := self.index.get(lease.delivery_id)) is not None
        ]
        await self.writes.write_all(changes)  # a Conflict: another write came first, nothing to do

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        found = await asyncio.gather(*(self._load_one(i) for i in message_ids))
        return [m for m in found if m is not None]

    async def queues(self, now: float) -> list[QueueInfo]:
        out = []
        for (tenant, domain), dids in sorted(self.index.queues.items()):
            due = self.index.next_due(tenant, domain)
            if due is not None:
                out.append(QueueInfo(tenant, domain, due, len(dids)))
        return out

    async def next_due(self, tenant: str, domain: str) -> float | None:
        return self.index.next_due(tenant, domain.lower())

    async def expire(self, now: float, limit: int) -> list[Lease]:
        entries = [
            e
            for e in self.index.by_id.values()
            if e.state.expires_at <= now and (not e.state.leased or e.state.due_at <= now)
        ]
        entries.sort(key=lambda e: (e.state.expires_at, e.state.delivery_id))
        return await self._take(entries, max(limit, 0), now + EXPIRE_LEASE)

    async def counts(self) -> Counts:
        total = await self.counters.totals()
        c = Counts(delivered=total["delivered"], bounced=total["bounced"])
        c.expired, c.dropped = total["expired"], total["dropped"]
        c.events = total["events"] - await self.log.pruned()
        for e in self.index.by_id.values():
            s = e.state
            if s.leased:
                c.inflight += 1
            elif s.attempts:
                c.deferred += 1
            else:
                c.queued += 1
            c.by_domain[s.domain] = c.by_domain.get(s.domain, 0) + 1
        c.messages, c.bodies = len(self.index.message_refs), len(self.index.body_refs)
        return c

    # -- EventLog (events.py) ------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self.log.read(after, limit)

    async def read_as(self, reader: str, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self.log.read_as(reader, after, limit)

    async def committed(self, consumer: str) -> int:
        return await self.log.committed(consumer)

    async def commit(self, consumer: str, offset: int) -> None:
        await self.log.commit(consumer, offset)

    async def head(self) -> int:
        return await self.log.head()

    async def prune(self, upto: int, before: float, limit: int) -> int:
        return await self.log.prune(upto, before, limit)

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None:
        """Events and suppressions about mail already settled (asynchronous bounces and
        complaints): the lists first, then the events (lists.py)."""
        if suppressions:
            await self._store().add(suppressions)
        await self.log.append(events)
        self._count("events", len(events))

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        with contextlib.suppress(Exception):
            await self.counters.flush()
        await close_connection(
            self._nc, None if self.log.cursors is None else self.log.cursors.close
        )
        if self._lists is not None:
            await self._lists.close()

    # -- helpers -------------------------------------------------------------------------

    def _subject(self, s: DeliveryState) -> str:
        return self._names.delivery(s.tenant, s.domain, s.delivery_id)

    async def _take(self, entries: list[Entry], limit: int, until: float) -> list[Lease]:
        taken: list[Lease] = []
        for start in range(0, len(entries), max(limit, 1)):
            if len(taken) >= limit:
                break
            chunk = entries[start : start + limit - len(taken)]
            states = [msgspec.structs.replace(e.state, due_at=until, leased=True) for e in chunk]
            done = await self.writes.write_all(list(zip(chunk, states, strict=True)))
            for s, r in zip(states, done, strict=True):
                if isinstance(r, Conflict):
                    continue  # another node took it (or changed it): our index learns soon
                taken.append(Lease(
                    s.delivery_id, s.message_id, s.tenant, s.rcpt, s.domain, s.attempts,
                    s.created_at, s.expires_at, s.sg_message_id,
                ))  # fmt: skip
        return taken

    async def _settle_all(self, todo: list[tuple[Settle, Entry]]) -> list[bool]:
        """Each settle's write, all pipelined; the ones another write overtook go one by
        one (re-read, written again). True: this settle changed the delivery."""
        first = await self.writes.write_all([(e, _settled(s, e)) for s, e in todo])
        results = []
        for (s, e), r in zip(todo, first, strict=True):
            if isinstance(r, Conflict):
                results.append(await self._settle_one(s, e, tried=1))
                continue
            if s.settlement is not Settlement.DEFERRED:
                self._count(s.settlement.value, 1)
            results.append(True)
        return results

    async def _settle_one(self, s: Settle, e: Entry, tried: int = 0) -> bool:
        state = _settled(s, e)  # from the state leased, whatever the re-reads find
        for attempt in range(tried, 3):
            if attempt:
                fresh = await self.writes.reread(e)
                if fresh is None:
                    return False  # settled elsewhere: nothing changes
                e = fresh
            try:
                await self.writes.write(e, state)
            except Conflict:
                continue
            if state is None:
                self._count(s.settlement.value, 1)
            return True
        return False

    async def _load_one(self, message_id: int) -> StoredMessage | None:
        try:
            msg = await self._js.get_msg(self._names.msgs, subject=self._names.message(message_id))
        except NotFoundError:
            return None
        if not msg.data or (msg.headers and GONE in msg.headers):
            return None
        rec = decode_message(msg.data)
        body = await self._bodies.get(rec.body_id, rec.body_in_object_store)
        if body is None:
            return None
        return StoredMessage(
            rec.message_id, rec.sg_message_id, rec.smtp_id, rec.tenant, body, rec.personalization
        )

    async def _watch(self) -> None:
        """Load the index from the SPOOL stream and keep it current (every node's writes)."""
        counter = itertools.count()

        def on_state(seq: int, did: int, msg: Msg, state: DeliveryState | None) -> None:
            self.index.apply(
                did, seq, msg.subject, state, writer_of((msg.headers or {}).get(MSG_ID))
            )
            self._seen = seq
            if next(counter) % 1024 == 1023:
                self.index.passed(seq)

        await follow_deliveries(self._js, self._names, on_state)
        self._tasks.append(asyncio.create_task(self.counters.run()))


def _settled(s: Settle, e: Entry) -> DeliveryState | None:
    """The delivery's state once ``s`` is applied to ``e``: deferred, or gone (None)."""
    if s.settlement is Settlement.DEFERRED:
        return msgspec.structs.replace(
            e.state, due_at=s.retry_at, attempts=e.state.attempts + 1, leased=False
        )
    return None
