"""Short leases, renewed while held: a cluster node's work outlives the node.

The delivery engine leases for LEASE_FOR (an hour, deliver/dispatch.py): on one machine a
lease only has to outlive the longest session, and a restart takes the spool back. In
cluster mode an hour-long lease held by a node that died keeps that work from every other
node for the hour (membership.py takes a departed member's leases over early, but only
for queues whose earlier owners it can name). So the cluster spool leases for
``cluster.lease`` (60 s unless configured) and :class:`LeaseKeeper` renews every lease
the node holds, every lease/3 seconds, for as long as the engine holds the work: in a
session, or waiting in a destination window behind a slow or stalled site. A node that is
killed stops renewing, and its deliveries are due again for the queue's next owner within
one lease. The engine's own bound still holds: a lease is renewed until ``lease_for``
(what the engine asked for) has passed since it was taken, so work the engine lost track
of comes back as it did before, after the hour.

A renewal is a compare-and-set write of the delivery's state (``due_at = now + lease``) on
its last sequence, with a message id of its own (``r<delivery>.<seq>.<node>``): the spool's
own writes name ``d<delivery>.<seq>.<node>``, and JetStream checks message ids before the
expected sequence, so a renewal and a deferral of the same sequence under one id would be
taken for duplicates of each other and one of them silently lost. A settle or release of a
held delivery first stops its renewal (:meth:`LeaseKeeper.let_go`) and waits for a
renewal batch writing it to finish, so the node's own writes never race each other. A
lease is renewed only from the sequence this node last wrote: a delivery that another
node changed meanwhile (it took it over after a renewal could not be written in time) is
let go, as is one whose renewal loses its compare-and-set.

Cost: each held delivery is written about every 2/3 of a lease (RENEW_BELOW), in batches
of RENEW_BATCH concurrent writes: with the default 60 s, a node holding 10,000
deliveries in its windows writes ~250 renewals a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

from postline.backends.jetstream.index import Entry
from postline.backends.jetstream.publish import Conflict, Out
from postline.backends.jetstream.records import encode
from postline.backends.jetstream.spool import JetStreamSpool
from postline.spool.interface import Lease
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

RENEWALS_PER_LEASE = 3  # passes per lease time
RENEW_BELOW = 0.5  # renew a lease with less than this share left (so with >= 1/3 left)
RENEW_BATCH = 256  # renewal writes in flight at once


@dataclass(slots=True)
class Held:
    """A lease this node holds: renewed until ``until`` (the engine's bound), known to be
    this node's while the delivery's last write is ``seq`` or says ``due_at`` (a renewal
    stored whose acknowledgement was lost: the stream has it, this node's index soon)."""

    until: float
    seq: int
    due_at: float

    def mine(self, e: Entry) -> bool:
        return e.seq == self.seq or e.state.due_at == self.due_at


class LeaseKeeper:
    """The leases this node holds, renewed in the background."""

    def __init__(
        self, spool: JetStreamSpool, lease: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.spool = spool
        self.lease = lease
        self.clock = clock
        self.held: dict[int, Held] = {}  # by delivery id
        self.renewed = 0  # renewal writes acknowledged (for tests and logs)
        self._writing: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def lease_for(self, asked: float) -> float:
        """The time a lease is taken for: the configured lease, or less if asked."""
        return min(asked, self.lease)

    def hold(self, leases: Iterable[Lease], until: float) -> None:
        """Renew ``leases`` (just taken) until ``until`` (the engine's lease_for)."""
        index = self.spool.index
        for lease in leases:
            e = index.get(lease.delivery_id)
            if e is not None:
                self.held[lease.delivery_id] = Held(until, e.seq, e.state.due_at)

    def holds(self, delivery_id: int) -> bool:
        return delivery_id in self.held

    async def let_go(self, delivery_ids: Iterable[int]) -> dict[int, Held]:
        """Stop renewing these (about to be settled or released); wait for a renewal
        batch that writes one of them. Returns what was held, for :meth:`hold_again`."""
        ids = set(delivery_ids)
        dropped = {d: self.held.pop(d) for d in ids if d in self.held}
        while ids & self._writing:
            await self._idle.wait()
        return dropped

    def hold_again(self, dropped: Mapping[int, Held]) -> None:
        """A settle that will be retried (the spool was unavailable): still this node's."""
        self.held.update(dropped)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease / RENEWALS_PER_LEASE)
            try:
                await self.renew(self.clock())
            except Exception as exc:  # NATS away: the next pass tries again
                log.warning("lease renewal failed", extra={"error": str(exc) or repr(exc)})

    async def renew(self, now: float) -> int:
        """Renew every held lease with less than RENEW_BELOW of the lease time left;
        forget the ones settled, released, changed by another node or past their bound.
        How many were renewed; raises the first failure after trying every one."""
        index = self.spool.index
        due: list[tuple[Entry, float]] = []
        for did, held in list(self.held.items()):
            e = index.get(did)
            if e is None or not e.state.leased or not held.mine(e) or now >= held.until:
                del self.held[did]
            elif e.state.due_at - now < RENEW_BELOW * self.lease:
                due.append((e, min(now + self.lease, held.until)))
        renewed, failed = 0, None
        for start in range(0, len(due), RENEW_BATCH):
            n, exc = await self._renew_batch(due[start : start + RENEW_BATCH])
            renewed += n
            failed = failed or exc
        self.renewed += renewed
        if failed is not None:
            raise failed
        return renewed

    async def _renew_batch(
        self, due: list[tuple[Entry, float]]
    ) -> tuple[int, BaseException | None]:
        due = [(e, d) for e, d in due if e.state.delivery_id in self.held]  # not let go
        for e, due_at in due:  # known as ours from here, even if the ack is lost
            held = self.held[e.state.delivery_id]
            held.seq, held.due_at = e.seq, due_at
        self._writing = {e.state.delivery_id for e, _ in due}
        self._idle.clear()
        try:
            done = await asyncio.gather(
                *(self._renew_one(e, due_at) for e, due_at in due), return_exceptions=True
            )
        finally:
            self._writing = set()
            self._idle.set()
        renewed, failed = 0, None
        for (e, _), result in zip(due, done, strict=True):
            now_held = self.held.get(e.state.delivery_id)
            if isinstance(result, BaseException):
                if isinstance(result, Conflict):  # another node changed it: not ours now
                    self.held.pop(e.state.delivery_id, None)
                else:
                    failed = failed or result
            else:
                renewed += 1
                if now_held is not None:
                    now_held.seq = result
        return renewed, failed

    async def _renew_one(self, e: Entry, due_at: float) -> int:
        """Write the renewed state; its stream sequence."""
        spool = self.spool
        did = e.state.delivery_id
        state = msgspec.structs.replace(e.state, due_at=due_at)
        out = Out(e.subject, encode(state), f"r{did}.{e.seq}.{spool._node}")
        seq = await spool._pub.cas(spool._names.spool, out, e.seq)
        spool.index.apply(did, seq, e.subject, state, spool._node)
        return seq
