"""The delivery engine: from spooled deliveries to SMTP sessions and back to the spool.

Strategies (named, as qmgr.c names its own):

* **Two tiers** (KumoMTA): the scheduled tier is the spool plus an in-memory index of
  (tenant, domain) queues by next due time (:mod:`postline.schedule.queues`); the ready
  tier is one bounded window per destination *site* (:mod:`postline.schedule.ready`).
  Only the windows hold messages in memory; a backlog stays on disk.
* **Site = MX rollup**: domains whose MX hosts are the same share one site, its window,
  its connection limit, rate and health (:mod:`postline.deliver.mx`).
* **Head-of-line isolation**: the pump never waits on a site. DNS lookups, leases and
  SMTP sessions run in their own tasks; a queue whose site has no room is parked on that
  site and re-armed when room frees up (:mod:`postline.deliver.dispatch`).
* **Concurrency feedback** (Postfix SCHEDULER_README): each site's session count is capped
  by an adaptive window that shrinks on throttling replies and grows on success.
* **Dead-site suspension**: when every host of a site fails, its waiting work is deferred
  and its queues parked until a probe succeeds (:mod:`postline.schedule.site`).
* **Expiry reconciler**: every delivery reaches a terminal state by its max age, whatever
  tier it is in; an overrun counter records any that took longer than a grace period
  (:mod:`postline.deliver.expiry`).
* **Group-committed settles**: sessions hand outcomes to the settler without waiting;
  one spool transaction records many outcomes and their events
  (:mod:`postline.deliver.settler`).
* **No sends while outcomes are held**: when the spool refuses outcomes, or a settle has
  taken SETTLE_SLOW, the engine leases nothing and takes its windows' waiting jobs out of
  the sessions' reach (:mod:`postline.deliver.hold`) until an outcome is recorded again.
  Mail sent while its outcome cannot be written is mail sent twice if the node then
  dies (another node, or the restart, takes its leases over): in the cluster chaos test
  that was most of the duplicates. Sessions finish the transaction they are in.

This module holds the engine's state and tasks, the pump, the shutdown, and what the
sessions (:mod:`postline.deliver.session`) call back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from postline.config import Config
from postline.deliver.dispatch import Dispatcher
from postline.deliver.dkim import DkimSigner
from postline.deliver.expiry import Reconciler, expiry_grace
from postline.deliver.hold import SendHold
from postline.deliver.metrics import Metrics
from postline.deliver.mx import Router
from postline.deliver.outcome_log import OutcomeLog
from postline.deliver.record import Recorder
from postline.deliver.session import start_sessions
from postline.deliver.settler import Settler
from postline.deliver.verp import ReturnPath
from postline.model.domain import domain_key
from postline.model.outcomes import Bounced, Deferred, Expired, Outcome
from postline.schedule.destination import Destination
from postline.schedule.queues import Queue, QueueIndex
from postline.schedule.ready import Job
from postline.spool.interface import AcceptBatch, Lease, Settle, Spool

log = logging.getLogger("postline.deliver")

# Stopping: how long a transaction in flight may take to finish. A session without one
# (connecting, in the greeting, EHLO or TLS, waiting for work, in QUIT) is cancelled at
# once: a destination that stalls its greeting held SIGTERM for its 60 s timeout.
STOP_SEND_GRACE = 10.0


class Engine:
    def __init__(
        self,
        spool: Spool,
        cfg: Config,
        router: Router,
        signer_for: Callable[[str], DkimSigner | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.cfg = cfg
        self.router = router
        self.signer_for = signer_for
        self.return_path: ReturnPath | None = None  # VERP envelope sender; runtime sets it
        # DKIM signatures are computed off the event loop (KumoMTA keeps a signing pool too).
        self.signing_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
        self.clock = clock
        self.expiry_grace = expiry_grace(float(cfg.delivery.max_age))
        self.recorder = Recorder(
            float(cfg.delivery.retry_min),
            float(cfg.delivery.retry_max),
            clock,
            outcomes=OutcomeLog.for_config(cfg, clock),
        )
        self.metrics = Metrics()
        self.index = QueueIndex()
        self.sites: dict[str, Destination] = {}
        self.wake = asyncio.Event()  # the pump's
        self.tasks: set[asyncio.Task[None]] = set()
        self.sessions: set[asyncio.Task[None]] = set()  # the SMTP sessions' tasks
        self.in_flight: dict[asyncio.Task[Any], Job] = {}  # sessions sending a job now
        self.stopping = False
        self.hold = SendHold(self.wake.set)  # outcomes held: no new sends (hold.py)
        self.dispatcher = Dispatcher(self)  # due queues → leases → site windows
        self.settler = Settler(self)
        self.reconciler = Reconciler(self)
        # Record outcomes (non-blocking; the settler commits them in groups). Bound here,
        # not wrapped: sessions settle every job through it.
        self.settle: Callable[[Sequence[Settle]], None] = self.settler.add

    # -- inputs ------------------------------------------------------------------
    def on_accept(self, batch: AcceptBatch) -> None:
        """New deliveries are durable: arm their queues."""
        for msg in batch.messages:
            for rcpt in msg.recipients:
                domain = domain_key(rcpt)  # A-label: one queue per destination
                self.index.arm((batch.tenant, domain), msg.due_at)
        self.wake.set()

    def rearm(self, queues: Iterable[Queue], when: float) -> None:
        """The operator made these queues due (``postline queue flush``): look at them then."""
        for queue in queues:
            self.index.arm(queue, when)
        self.wake.set()

    def outcome(self, job: Job, lease: Lease, outcome: Outcome) -> Settle:
        if isinstance(outcome, Deferred):
            self.metrics.deferred += 1
        elif isinstance(outcome, Bounced):
            self.metrics.bounced += 1
        elif isinstance(outcome, Expired):
            self.metrics.expired += 1
        else:
            self.metrics.delivered += 1
        return self.recorder.settle(lease, job.meta, outcome)

    # -- life cycle ----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        for q in await self.spool.queues(self.clock()):
            self.index.arm((q.tenant, q.domain), q.next_due)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pump())
            tg.create_task(self.settler.run())
            tg.create_task(self.reconciler.run())
            await stop.wait()
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.stopping = True
        self.wake.set()
        for site in self.sites.values():
            site.ready.wake_all()
        waiting = [job for site in self.sites.values() for job in site.ready.drain()]
        waiting += [job for _, job in self.hold.take_back()]
        leases = [lease for job in waiting for lease in job.leases]
        if leases:
            try:
                await self.spool.release(leases, self.clock())
            except Exception:  # the leases run out by themselves: sent again, later
                log.exception("could not give waiting work back to the spool on stop")
        for task in self.sessions - self.in_flight.keys():
            task.cancel()  # nothing in flight: nothing to lose
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STOP_SEND_GRACE)
        if self.tasks:
            await self._cancel_the_rest()
        self.signing_pool.shutdown(wait=False)
        self.settler.wake.set()

    async def _cancel_the_rest(self) -> None:
        """Past the grace: cancel what still runs; the jobs it was sending go back to the
        spool, due now (sent again after the restart: at least once, maybe twice)."""
        jobs = list(self.in_flight.values())
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks, timeout=STOP_SEND_GRACE)
        leases = [lease for job in jobs for lease in job.leases]
        log.warning(
            "stopped deliveries still in flight after the grace; they are sent again later",
            extra={"jobs": len(jobs), "recipients": len(leases), "grace": STOP_SEND_GRACE},
        )
        if leases:
            try:
                await self.spool.release(leases, self.clock())
            except Exception:  # their leases run out by themselves
                log.exception("could not give the work in flight back to the spool on stop")

    def spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # -- the pump: due queues → leases → site windows (dispatch.py) -------------------
    async def _pump(self) -> None:
        while not self.stopping:
            if self.sends_held():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                self.wake.clear()
                continue
            self.dispatcher.dispatch_due(self.clock())
            nxt = self.index.next_time()
            timeout = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self.clock()))
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()

    def sends_held(self) -> bool:
        """Whether outcomes are held; pauses the sends on the change to held, and gives
        the paused jobs back to their windows (and sessions) on the change back."""
        if self.hold.held():
            if not self.hold.paused:
                self._pause()
            return True
        if self.hold.paused:
            self._resume()
        return False

    def _pause(self) -> None:
        self.metrics.send_pauses += 1
        jobs = [(site, job) for site in self.sites.values() for job in site.ready.drain()]
        self.hold.pause(jobs)
        log.warning(
            "outcomes cannot be recorded: no new sends until they are",
            extra={"jobs_waiting": len(jobs), "reason": self.hold.reason},
        )

    def _resume(self) -> None:
        back = self.hold.take_back()
        sites = {}
        for site, job in back:
            site.ready.push(job)
            sites[site.key] = site
        for site in sites.values():
            start_sessions(self, site)
        log.info("outcomes recorded again: sending", extra={"jobs_waiting": len(back)})

    # -- used by sessions --------------------------------------------------------------
    def expired(self, job: Job, now: float) -> bool:
        return now >= job.leases[0].expires_at + self.expiry_grace

    def room_freed(self, site: Destination) -> None:
        site.unpark(self.index, self.clock())
        self.wake.set()

    def defer_waiting(self, site: Destination, outcome: Deferred) -> None:
        """The site is down: defer everything waiting in its window."""
        for job in site.ready.drain():
            self.settle([self.outcome(job, lease, outcome) for lease in job.leases])
        self.room_freed(site)

    def finish(self, site: Destination, job: Job, settles: list[Settle]) -> None:
        """A session is done with a job: record its outcomes, free its window slots."""
        self.settle(settles)
        site.ready.settled(job.size)
        self.room_freed(site)

    def abandon(self, site: Destination, job: Job) -> None:
        """A job whose outcome cannot be recorded: free its slots, give its leases back."""
        site.ready.settled(job.size)
        self.spawn(self.release(job.leases, self.clock() + float(self.cfg.delivery.retry_min)))
        self.room_freed(site)

    async def release(self, leases: list[Lease], due_at: float) -> None:
        try:
            await self.spool.release(leases, due_at)
        except Exception as exc:  # then they come back when their lease ends
            log.error("releasing leases failed", exc_info=exc, extra={"leases": len(leases)})
