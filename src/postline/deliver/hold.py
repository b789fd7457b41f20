"""Whether the engine may start new sends: not while outcomes cannot be recorded.

An outcome the spool has not recorded is a delivery whose lease is still out. If the node
dies then, whoever takes the lease over (another cluster node, or this node's restart)
sends it again. While the spool refuses outcomes (SpoolUnavailable) or a settle hangs
(a JetStream stream electing a new leader after a server was lost: its writes are retried
for up to 30 s before they are refused), every new send adds one more such duplicate: in
the cluster chaos test (two nodes, one NATS server killed, then a node) the takeovers and
the duplicates at the MX were the same deliveries (64/62, 39/39, 41/38 in three runs).

So outcomes are *held* from a refused settle, or from SETTLE_SLOW into a settle still
running, until a settle succeeds. While they are held the engine (engine.py) leases
nothing and takes the jobs waiting in its windows out of the sessions' reach (they keep
their leases: not sent, so a node taking them over sends them once); it gives them back
when outcomes are recorded again. A session finishes the transaction it is in.

SETTLE_SLOW is far above a settle's usual time (milliseconds; a large group commit on a
loaded machine, some hundred) and below a stall's (seconds), so that a busy spool is
not taken for a stalled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postline.schedule.destination import Destination
    from postline.schedule.ready import Job

SETTLE_SLOW = 1.0  # seconds into a settle after which its outcomes count as held


class SendHold:
    def __init__(
        self,
        wake: Callable[[], None],
        slow: float = SETTLE_SLOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wake = wake  # the pump's: it pauses and resumes the sends
        self.slow = slow
        self._clock = clock
        self.paused = False
        self._refused = ""  # the spool's reason, while its last answer was a refusal
        self._settling_since: float | None = None
        self._stash: list[tuple[Destination, Job]] = []

    def held(self) -> bool:
        if self._refused:
            return True
        since = self._settling_since
        return since is not None and self._clock() - since >= self.slow

    @property
    def reason(self) -> str:
        return self._refused or f"a settle has taken more than {self.slow:g} s"

    @contextlib.contextmanager
    def settling(self) -> Iterator[None]:
        """Around one settle call: past ``slow`` the pump is woken to pause."""
        self._settling_since = self._clock()
        timer = asyncio.get_running_loop().call_later(self.slow, self._wake)
        try:
            yield
        finally:
            timer.cancel()
            self._settling_since = None

    def refused(self, reason: str) -> None:
        self._refused = reason or "spool unavailable"

    def recorded(self) -> None:
        """Outcomes were recorded: sends may go on (the pump resumes them)."""
        if self._refused:
            self._refused = ""
        self._wake()

    def pause(self, jobs: Iterable[tuple[Destination, Job]]) -> None:
        self.paused = True
        self._stash.extend(jobs)

    def stash(self, site: Destination, jobs: Iterable[Job]) -> None:
        """Jobs leased before the pause: they wait with the others."""
        self._stash.extend((site, job) for job in jobs)

    def take_back(self) -> list[tuple[Destination, Job]]:
        """The waiting jobs (to their windows on resume, released on stop)."""
        jobs, self._stash = self._stash, []
        self.paused = False
        return jobs
