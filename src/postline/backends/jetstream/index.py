"""This node's view of every delivery in the SPOOL stream, kept by stream sequence.

Fed by this node's own acknowledged writes and by an ordered consumer over the stream
(``last_per_subject`` at start, then every change any node makes), so a write is visible
here as soon as it is acknowledged and other nodes' writes shortly after. A change older
than what is known (a lower sequence for the same delivery) is ignored, so the two feeds
may interleave in any order. Tombstoned deliveries are remembered until the consumer has
passed the tombstone, so an older state arriving late cannot resurrect them.

Each queue keeps a heap of ``(due_at, delivery id, sequence)``, pushed at every change:
``due`` (the lease) takes the earliest due deliveries without looking at the rest of the
queue, and ``next_due`` reads the top. An item whose delivery has changed since (another
sequence) or is gone is stale and dropped when it comes up; a heap that grows past twice
its queue is rebuilt. (Before, a lease scanned and sorted the whole queue: with a backlog
of 30,000 deliveries in one queue that was a fifth of a cluster node's CPU.)
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from postline.backends.jetstream.records import GONE, DeliveryState, Names, decode_delivery
from postline.backends.jetstream.setup import placed

CATCH_UP_TIMEOUT = 60.0  # seconds to read the stream's current deliveries


@dataclass(slots=True)
class Entry:
    state: DeliveryState
    seq: int
    subject: str
    # the spool run (incarnation) that wrote this state, from its message id; "" unknown.
    # A lease this run wrote is never another node's to take over (cluster/backends.py)
    writer: str = ""


def writer_of(msg_id: str | None) -> str:
    """The writer named by a write's message id (``<kind><delivery>.<seq>.<node>``)."""
    parts = (msg_id or "").split(".")
    return parts[2] if len(parts) == 3 else ""


class Index:
    def __init__(self) -> None:
        self.by_id: dict[int, Entry] = {}
        self.queues: dict[tuple[str, str], set[int]] = {}
        self.message_refs: dict[int, int] = {}
        self.body_refs: dict[int, int] = {}
        self._gone: dict[int, int] = {}  # delivery id -> sequence of its tombstone
        self._due: dict[tuple[str, str], list[tuple[float, int, int]]] = {}  # per queue
        # For status and /metrics without a scan of the queue (report.py; a scan of the
        # deepest queues per scrape blocked the loop, ~7% of it at 5 scrapes a second):
        self.leased: dict[tuple[str, str], int] = {}  # leased deliveries per queue
        self._born: dict[tuple[str, str], list[tuple[float, int]]] = {}  # (created_at, id)

    def get(self, delivery_id: int) -> Entry | None:
        return self.by_id.get(delivery_id)

    def apply(
        self,
        delivery_id: int,
        seq: int,
        subject: str,
        state: DeliveryState | None,
        writer: str = "",
    ) -> None:
        """Record the delivery's state at ``seq`` (None: settled) unless newer is known."""
        old = self.by_id.get(delivery_id)
        if (old is not None and old.seq >= seq) or self._gone.get(delivery_id, 0) >= seq:
            return
        if old is not None:
            self._remove(old.state)
        if state is None:
            self._gone[delivery_id] = seq
            return
        self._gone.pop(delivery_id, None)
        self.by_id[delivery_id] = Entry(state, seq, subject, writer)
        key = (state.tenant, state.domain)
        ids = self.queues.setdefault(key, set())
        ids.add(delivery_id)
        heap = self._due.setdefault(key, [])
        heapq.heappush(heap, (state.due_at, delivery_id, seq))
        if len(heap) > 2 * len(ids) + 64:  # mostly stale items: rebuild from the live ones
            self._due[key] = self._heap_of(ids)
        if state.leased:
            self.leased[key] = self.leased.get(key, 0) + 1
        born = self._born.get(key)
        if born is None:  # a new queue (or this delivery emptied it in _remove)
            self._born[key] = [(state.created_at, delivery_id)]
        elif old is None or old.state.created_at != state.created_at:
            heapq.heappush(born, (state.created_at, delivery_id))
            if len(born) > 2 * len(ids) + 64:
                self._born[key] = self._born_of(ids)
        self.message_refs[state.message_id] = self.message_refs.get(state.message_id, 0) + 1
        self.body_refs[state.body_id] = self.body_refs.get(state.body_id, 0) + 1

    def passed(self, seq: int) -> None:
        """The stream consumer delivered everything up to ``seq``: forget older tombstones."""
        if self._gone:
            self._gone = {d: s for d, s in self._gone.items() if s > seq}

    def queue(self, tenant: str, domain: str) -> Iterator[Entry]:
        for did in self.queues.get((tenant, domain), ()):
            yield self.by_id[did]

    def due(
        self, tenant: str, domain: str, now: float, n: int, skip: Collection[int] = ()
    ) -> list[Entry]:
        """Up to ``n`` deliveries of the queue due at ``now`` (not in ``skip``), earliest
        ``(due_at, delivery id)`` first. They stay in the heap until their state changes."""
        heap = self._due.get((tenant, domain), [])
        out: list[Entry] = []
        kept: list[tuple[float, int, int]] = []
        while heap and len(out) < n and heap[0][0] <= now:
            item = heapq.heappop(heap)
            e = self.by_id.get(item[1])
            if e is None or e.seq != item[2]:
                continue  # stale: changed since, or gone
            kept.append(item)
            if item[1] not in skip:
                out.append(e)
        for item in kept:
            heapq.heappush(heap, item)
        return out

    def next_due(self, tenant: str, domain: str) -> float | None:
        """The earliest due time in the queue (None: empty)."""
        heap = self._due.get((tenant, domain))
        while heap:
            due_at, did, seq = heap[0]
            e = self.by_id.get(did)
            if e is not None and e.seq == seq:
                return due_at
            heapq.heappop(heap)
        return None

    def oldest(self, tenant: str, domain: str) -> float | None:
        """The earliest ``created_at`` in the queue (None: empty)."""
        heap = self._born.get((tenant, domain))
        while heap:
            created, did = heap[0]
            e = self.by_id.get(did)
            if e is not None and e.state.created_at == created:
                return created
            heapq.heappop(heap)
        return None

    def _born_of(self, ids: Collection[int]) -> list[tuple[float, int]]:
        heap = [(self.by_id[d].state.created_at, d) for d in ids]
        heapq.heapify(heap)
        return heap

    def _heap_of(self, ids: Collection[int]) -> list[tuple[float, int, int]]:
        heap = [(e.state.due_at, d, e.seq) for d in ids if (e := self.by_id[d])]
        heapq.heapify(heap)
        return heap

    def _remove(self, s: DeliveryState) -> None:
        del self.by_id[s.delivery_id]
        key = (s.tenant, s.domain)
        q = self.queues[key]
        q.discard(s.delivery_id)
        if s.leased:
            self.leased[key] -= 1
            if not self.leased[key]:
                del self.leased[key]
        if not q:
            del self.queues[key]
            self._due.pop(key, None)
            self._born.pop(key, None)
        for refs, ref in ((self.message_refs, s.message_id), (self.body_refs, s.body_id)):
            refs[ref] -= 1
            if refs[ref] == 0:
                del refs[ref]


OnState = Callable[[int, int, Msg, DeliveryState | None], None]  # seq, delivery id, msg, state


async def follow_deliveries(js: JetStreamContext, names: Names, on_state: OnState) -> Subscription:
    """Call ``on_state`` with every delivery's last state in the SPOOL stream (None for a
    tombstone), then with every change; returns once the stream as it was at the call has
    been read. An ordered consumer (``last_per_subject``): the spool's index keeps it for
    the node's life, the audit unsubscribes once caught up."""
    info = await placed(lambda: js.stream_info(names.spool))
    caught_up = asyncio.Event()
    last = int(info.state.last_seq)
    if info.state.messages == 0:
        caught_up.set()

    async def on_msg(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        did = int(msg.subject.rsplit(".", 1)[1])
        state = None if GONE in (msg.headers or {}) else decode_delivery(msg.data)
        on_state(seq, did, msg, state)
        if seq >= last:  # the stream's last message is the last of its subject
            caught_up.set()

    # retried as stream creation is (setup.placed): a consumer made by a request that
    # timed out has no subscription and goes away by itself (an ephemeral one)
    sub = await placed(lambda: js.subscribe(
        names.deliveries, stream=names.spool, cb=on_msg, ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
    ))  # fmt: skip
    try:
        await asyncio.wait_for(caught_up.wait(), CATCH_UP_TIMEOUT)
    except BaseException:
        await sub.unsubscribe()
        raise
    return sub
