"""How often a node tries to take over a departed node's leases, and what it learns from a
try that lost.

A queue with orphans (membership.py: leased by a node no longer alive) is due at once, so
that its work does not wait out the dead node's lease. A takeover is a compare-and-set
write on the sequence this node's index holds (backends/jetstream/index.py). In one chaos
run of 12 that index was behind the stream for those deliveries: every write conflicted,
the index never caught up, the queue stayed "due now" and the node tried again at once,
26,446 times in 19 s (each logging "took over ... deliveries: 0").

So a try that conflicts reads the current state of the deliveries it lost
(:func:`refresh`, one ``get_msg`` each: the index is right for them from there on), and
the queue's next try waits, from FIRST_WAIT doubling to MAX_WAIT while tries keep
conflicting; a try without conflicts resets the wait. Never a busy loop, whatever the
index says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from postline.backends.jetstream.index import Entry
from postline.backends.jetstream.spool import JetStreamSpool
from postline.spool.interface import Lease

if TYPE_CHECKING:
    from postline.cluster.backends import ClusterSpool

log = logging.getLogger("postline.cluster")

FIRST_WAIT = 0.5  # seconds before a queue's next takeover try after one that conflicted
MAX_WAIT = 10.0


class Takeovers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next: dict[tuple[str, str], tuple[float, float]] = {}  # queue -> (at, wait)

    def due(self, queue: tuple[str, str]) -> bool:
        """May the queue's orphans be taken over now?"""
        return self.wait(queue) <= 0.0

    def wait(self, queue: tuple[str, str]) -> float:
        """Seconds until the queue's next takeover try (0: now)."""
        got = self._next.get(queue)
        return 0.0 if got is None else max(0.0, got[0] - self._clock())

    def tried(self, queue: tuple[str, str], conflicts: int) -> None:
        if not conflicts:
            self._next.pop(queue, None)
            return
        last = self._next.get(queue)
        wait = FIRST_WAIT if last is None else min(last[1] * 2, MAX_WAIT)
        self._next[queue] = (self._clock() + wait, wait)


async def take_over(
    node: ClusterSpool,
    queue: tuple[str, str],
    orphans: list[Entry],
    due_at: float,
    until: float,
) -> list[Lease]:
    """Take the orphans over (leased until ``due_at``, renewed until ``until``); on
    conflicts read their current state and make the queue's next try wait."""
    adopted = await node.spool._take(orphans, len(orphans), due_at)
    node.keeper.hold(adopted, until)
    won = {x.delivery_id for x in adopted}
    lost = [e for e in orphans if e.state.delivery_id not in won]
    node.takeovers.tried(queue, conflicts=len(lost))
    if lost:
        await refresh(node.spool, lost)
    if adopted:
        log.warning(
            "took over deliveries leased by a departed node",
            extra={"tenant": queue[0], "domain": queue[1], "deliveries": len(adopted),
                   "conflicts": len(lost)},
        )  # fmt: skip
    return adopted


async def refresh(spool: JetStreamSpool, entries: Sequence[Entry]) -> None:
    """Read the deliveries' current state into the index (a takeover lost on them)."""
    for e in entries:
        with contextlib.suppress(Exception):  # NATS away: the next try reads again
            await asyncio.wait_for(spool.writes.reread(e), 5.0)
