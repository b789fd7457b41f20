"""The expiry reconciler: every delivery reaches a terminal state by its max age.

Whatever tier a delivery is in (waiting in the spool, leased, in a window), a pass every
tenth of ``delivery.max_age`` (between 0.05 s and 5 s) asks the spool for deliveries past
their max age plus :func:`expiry_grace` and settles them as expired, up to ``PASS_LIMIT``
at a time (at once again while there are more). The settler counts any that took longer
than its overrun grace (:mod:`postline.deliver.settler`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from postline.deliver.jobs import load_jobs
from postline.model.outcomes import Expired

if TYPE_CHECKING:
    from postline.deliver.engine import Engine

log = logging.getLogger("postline.deliver")

PASS_LIMIT = 1000  # deliveries expired per spool call


def expiry_grace(max_age: float) -> float:
    """Seconds past its max age before a delivery is expired (and a job no longer sent)."""
    # The backoff schedules a last attempt at the expiry instant itself; expiring only
    # a little after it lets that attempt happen (and report its own error).
    return min(60.0, max_age / 10)


class Reconciler:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def run(self) -> None:
        engine = self._engine
        interval = max(0.05, min(5.0, float(engine.cfg.delivery.max_age) / 10))
        while not engine.stopping:
            try:
                more = await self._expire_due()
            except Exception as exc:  # must not end the TaskGroup: that stops the node
                log.error("expiry pass failed; retrying", exc_info=exc)
                engine.metrics.job_errors += 1
                more = False
            if not more:
                await self._sleep(interval)

    async def _expire_due(self) -> bool:
        """Settle deliveries past their max age; True when more may be waiting."""
        engine = self._engine
        leases = await engine.spool.expire(engine.clock() - engine.expiry_grace, PASS_LIMIT)
        expired = Expired("max age reached while queued")
        jobs = await load_jobs(engine.spool, leases, engine.clock())
        engine.settle([engine.outcome(job, lease, expired) for job in jobs for lease in job.leases])
        return len(leases) >= PASS_LIMIT

    async def _sleep(self, seconds: float) -> None:
        engine = self._engine
        end = engine.clock() + seconds
        while not engine.stopping and engine.clock() < end:
            await asyncio.sleep(min(0.2, seconds))
