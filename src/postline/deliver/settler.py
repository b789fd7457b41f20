"""The settler: outcomes group-committed to the spool, held while the spool refuses them.

Sessions hand their outcomes over without waiting (:meth:`Settler.add`); one task takes
everything gathered since its last commit and records it in one spool transaction, with
its events. Then the settled deliveries' queues are re-armed at their retry times and any
delivery settled more than ``OVERRUN_GRACE`` past its max age is counted.

* A refusal (SpoolUnavailable) keeps the batch, holds the sends (:mod:`postline.deliver.hold`)
  and retries it every ``SPOOL_RETRY``; stopping, it gives up after ``STOP_SETTLE_GRACE``.
* Any other error settles the batch one outcome at a time, so that one bad outcome cannot
  hold the others; one that still fails keeps its lease and is tried again when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from postline.deliver.dispatch import SPOOL_RETRY
from postline.spool.interface import Settle, SpoolUnavailable

if TYPE_CHECKING:
    from postline.deliver.engine import Engine

log = logging.getLogger("postline.deliver")

OVERRUN_GRACE = 300.0  # "terminal by max age plus a few minutes"
STOP_SETTLE_GRACE = 10.0  # stopping: how long to keep retrying outcomes the spool refuses


class Settler:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._settles: list[Settle] = []
        self.wake = asyncio.Event()

    def add(self, settles: Sequence[Settle]) -> None:
        """Record outcomes (non-blocking; the settler commits them in groups)."""
        self._settles.extend(settles)
        self.wake.set()

    async def run(self) -> None:
        engine = self._engine
        stop_deadline: float | None = None
        while True:
            if not self._settles:
                if engine.stopping and not engine.tasks:
                    return
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except TimeoutError:
                    continue
            batch, self._settles = self._settles, []
            if not batch:  # woken by an empty settle (an expiry pass that found nothing)
                continue
            try:
                with engine.hold.settling():
                    await engine.spool.settle(batch)
            except SpoolUnavailable as exc:
                # Keep the outcomes and retry: they are what the spool must learn.
                log.warning("spool unavailable; outcomes held", extra={"reason": exc.reason})
                engine.hold.refused(exc.reason)
                engine.sends_held()  # pause at once: a session must not take its next job
                self._settles[:0] = batch
                if engine.stopping:
                    stop_deadline = stop_deadline or time.monotonic() + STOP_SETTLE_GRACE
                    if time.monotonic() >= stop_deadline:
                        self._abandon_on_stop()
                        return
                await asyncio.sleep(SPOOL_RETRY)
                continue
            except Exception:
                log.exception("settle failed; settling the batch one outcome at a time")
                batch = await self._settle_singly(batch)
            self._after_settle(batch)

    async def _settle_singly(self, batch: list[Settle]) -> list[Settle]:
        """Settle one by one so that one bad outcome cannot hold the others. The ones that
        still fail keep their lease: the delivery is tried again when it runs out (at least
        once, never lost). Outcomes refused for want of space are held as usual."""
        engine = self._engine
        done: list[Settle] = []
        for s in batch:
            try:
                await engine.spool.settle([s])
            except SpoolUnavailable as exc:
                engine.hold.refused(exc.reason)
                self._settles.append(s)
            except Exception:
                engine.metrics.settle_errors += 1
                log.exception(
                    "an outcome could not be recorded; the delivery stays leased and is "
                    "retried when its lease ends",
                    extra={"sg_message_id": s.lease.sg_message_id, "rcpt": s.lease.rcpt},
                )
            else:
                done.append(s)
        return done

    def _abandon_on_stop(self) -> None:
        """Stopping, and the spool has refused writes for STOP_SETTLE_GRACE: stop anyway.
        The unrecorded deliveries keep their leases and are sent again after a restart
        (at least once); a node that cannot stop would be worse (it hung on SIGTERM)."""
        log.error(
            "stopping with outcomes the spool refused; those deliveries will be repeated",
            extra={"outcomes": len(self._settles)},
        )
        self._settles = []

    def _after_settle(self, batch: list[Settle]) -> None:
        engine = self._engine
        if batch:
            engine.hold.recorded()
        now = engine.clock()
        for s in batch:
            lease = s.lease
            if s.retry_at:
                engine.index.arm((lease.tenant, lease.domain), s.retry_at)
            if now > lease.expires_at + OVERRUN_GRACE:
                engine.metrics.expiry_overruns += 1
        engine.wake.set()
