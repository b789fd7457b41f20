"""Retention of the event log: events every running consumer has handled and that are
older than ``events.retention`` are removed, a bounded batch per transaction, so the
disk does not grow forever (the spool's incremental vacuum gives the pages back).

A consumer that falls behind holds the log for itself: nothing it has not handled goes,
whatever its age. With no consumer running, the age alone decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from postline.events.consumer import RunnerSet
from postline.events.log import EventLog
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.events")

BATCH = 5000  # events per prune transaction: short, so the mail path never waits long
INTERVAL = 60.0  # seconds between passes when nothing was left to prune


class Retention:
    def __init__(
        self,
        events: EventLog,
        runners: RunnerSet,
        retention: float,
        clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
    ) -> None:
        self.events = events
        self.runners = runners
        self.retention = retention
        self.clock = clock
        self.interval = interval
        self.pruned = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def pass_once(self) -> int:
        """Prune what may go now; the number of events removed."""
        floor = self.runners.floor()
        upto = await self.events.head() if floor is None else floor
        before = self.clock() - self.retention
        total = 0
        while True:
            gone = await self.events.prune(upto, before, BATCH)
            total += gone
            self.pruned += gone
            if gone < BATCH:
                return total
            await asyncio.sleep(0)  # let the mail path's transactions in between

    async def _run(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception:
                log.exception("event log retention failed; retrying at the next pass")
            await asyncio.sleep(self.interval)
