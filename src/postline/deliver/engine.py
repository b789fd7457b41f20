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
  site and re-armed when room frees up.
* **Concurrency feedback** (Postfix SCHEDULER_README): each site's session count is capped
  by an adaptive window that shrinks on throttling replies and grows on success.
* **Dead-site suspension**: when every host of a site fails, its waiting work is deferred
  and its queues parked until a probe succeeds (:mod:`postline.schedule.site`).
* **Expiry reconciler**: every delivery reaches a terminal state by its max age, whatever
  tier it is in; an overrun counter records any that took longer than a grace period.
* **Group-committed settles**: sessions hand outcomes to the settler without waiting;
  one spool transaction records many outcomes and their events.
* **No sends while outcomes are held**: when the spool refuses outcomes, or a settle has
  taken SETTLE_SLOW, the engine leases nothing and takes its windows' waiting jobs out of
  the sessions' reach (:mod:`postline.deliver.hold`) until an outcome is recorded again.
  Mail sent while its outcome cannot be written is mail sent twice if the node then
  dies (another node, or the restart, takes its leases over): in the cluster chaos test
  that was most of the duplicates. Sessions finish the transaction they are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from postline.config import Config
from postline.deliver.dkim import DkimSigner
from postline.deliver.hold import SendHold
from postline.deliver.jobs import load_jobs
from postline.deliver.mx import Route, RouteFailure, Router
from postline.deliver.outcome_log import OutcomeLog
from postline.deliver.record import Recorder
from postline.deliver.session import start_sessions
from postline.deliver.verp import ReturnPath
from postline.model.domain import domain_key
from postline.model.outcomes import Bounced, Deferred, Expired, Outcome
from postline.schedule.destination import Destination
from postline.schedule.queues import Queue, QueueIndex
from postline.schedule.ready import Job
from postline.spool.interface import (
    AcceptBatch,
    Lease,
    Settle,
    Spool,
    SpoolUnavailable,
)

log = logging.getLogger("postline.deliver")

LEASE_FOR = 3600.0  # visibility timeout of a lease; far above any session's duration
LEASE_BATCH = 256  # deliveries leased per spool call
OVERRUN_GRACE = 300.0  # "terminal by max age plus a few minutes"
SPOOL_RETRY = 1.0  # seconds before retrying a spool the disk refused
STOP_SETTLE_GRACE = 10.0  # stopping: how long to keep retrying outcomes the spool refuses
# Stopping: how long a transaction in flight may take to finish. A session without one
# (connecting, in the greeting, EHLO or TLS, waiting for work, in QUIT) is cancelled at
# once: a destination that stalls its greeting held SIGTERM for its 60 s timeout.
STOP_SEND_GRACE = 10.0


@dataclass
class Metrics:
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    expiry_overruns: int = 0
    sessions_opened: int = 0
    job_errors: int = 0  # unforeseen exceptions that a job or lease survived (each logged)
    settle_errors: int = 0  # outcomes the spool refused with an error (left leased, retried)
    send_pauses: int = 0  # times new sends stopped because outcomes could not be recorded


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
        # The backoff schedules a last attempt at the expiry instant itself; expiring only
        # a little after it lets that attempt happen (and report its own error).
        self.expiry_grace = min(60.0, float(cfg.delivery.max_age) / 10)
        self.recorder = Recorder(
            float(cfg.delivery.retry_min),
            float(cfg.delivery.retry_max),
            clock,
            outcomes=OutcomeLog.for_config(cfg, clock),
        )
        self.metrics = Metrics()
        self.index = QueueIndex()
        self.sites: dict[str, Destination] = {}
        self._routes: dict[str, tuple[float, Route | RouteFailure]] = {}
        self._resolving: dict[str, list[Queue]] = {}
        self._busy: set[Queue] = set()  # queues with a lease in progress
        self._settles: list[Settle] = []
        self._settle_wake = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sessions: set[asyncio.Task[None]] = set()  # the SMTP sessions' tasks
        self.in_flight: dict[asyncio.Task[Any], Job] = {}  # sessions sending a job now
        self.stopping = False
        self.hold = SendHold(self._wake.set)  # outcomes held: no new sends (hold.py)

    # -- inputs ------------------------------------------------------------------
    def on_accept(self, batch: AcceptBatch) -> None:
        """New deliveries are durable: arm their queues."""
        for msg in batch.messages:
            for rcpt in msg.recipients:
                domain = domain_key(rcpt)  # A-label: one queue per destination
                self.index.arm((batch.tenant, domain), msg.due_at)
        self._wake.set()

    def settle(self, settles: Sequence[Settle]) -> None:
        """Record outcomes (non-blocking; the settler commits them in groups)."""
        self._settles.extend(settles)
        self._settle_wake.set()

    def rearm(self, queues: Iterable[Queue], when: float) -> None:
        """The operator made these queues due (``postline queue flush``): look at them then."""
        for queue in queues:
            self.index.arm(queue, when)
        self._wake.set()

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
            tg.create_task(self._settler())
            tg.create_task(self._reconciler())
            await stop.wait()
            await self._shutdown()

    async def _shutdown(self) -> None:
        self.stopping = True
        self._wake.set()
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
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_SEND_GRACE)
        if self._tasks:
            await self._cancel_the_rest()
        self.signing_pool.shutdown(wait=False)
        self._settle_wake.set()

    async def _cancel_the_rest(self) -> None:
        """Past the grace: cancel what still runs; the jobs it was sending go back to the
        spool, due now (sent again after the restart: at least once, maybe twice)."""
        jobs = list(self.in_flight.values())
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=STOP_SEND_GRACE)
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
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    # -- the pump: due queues → leases → site windows ---------------------------------
    async def _pump(self) -> None:
        while not self.stopping:
            if self._held():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                self._wake.clear()
                continue
            now = self.clock()
            for queue in self.index.pop_due(now):
                try:
                    self._dispatch(queue, now)
                except Exception as exc:  # one queue's trouble must not stop every queue
                    log.error("dispatch failed", exc_info=exc, extra={"queue": list(queue)})
                    self.metrics.job_errors += 1
                    self.index.arm(queue, now + SPOOL_RETRY)
            nxt = self.index.next_time()
            timeout = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self.clock()))
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _held(self) -> bool:
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

    def _dispatch(self, queue: Queue, now: float) -> None:
        if queue in self._busy:
            return  # the running lease re-arms it
        route = self._route_of(queue, now)
        if route is None:
            return
        if isinstance(route, RouteFailure):
            self._busy.add(queue)
            self.spawn(self._fail_queue(queue, route))
            return
        site = self._site(route, queue[1])
        room = site.room_for_lease()
        if room <= 0:
            site.park(queue, self.index, now)
            return
        self._busy.add(queue)
        site.leasing += min(room, LEASE_BATCH)
        self.spawn(self._lease(queue, site, min(room, LEASE_BATCH)))

    def _route_of(self, queue: Queue, now: float) -> Route | RouteFailure | None:
        domain = queue[1]
        cached = self._routes.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        waiting = self._resolving.get(domain)
        if waiting is not None:
            waiting.append(queue)
            return None
        self._resolving[domain] = [queue]
        self.spawn(self._resolve(domain))
        return None

    async def _resolve(self, domain: str) -> None:
        result: Route | RouteFailure
        try:
            result = await self.router.route(domain)
        except Exception as exc:  # a resolver bug must not strand the domain's queues
            log.exception("route lookup failed", extra={"domain": domain})
            result = RouteFailure("error", False, f"451 4.4.3 route lookup failed: {exc}")
        queues = self._resolving.pop(domain, [])
        # The router caches for the DNS TTL; this cache only spares a task per dispatch.
        self._routes[domain] = (self.clock() + 1.0, result)
        for q in queues:
            self.index.arm(q, self.clock())
        self._wake.set()

    def _site(self, route: Route, domain: str) -> Destination:
        site = self.sites.get(route.site)
        if site is None:
            shaping = self.cfg.shaping_for(domain)
            probe = (float(self.cfg.delivery.retry_min), float(self.cfg.delivery.retry_max))
            site = Destination(
                route.site, route, shaping, self.cfg.delivery.window, self.clock, probe
            )
            self.sites[route.site] = site
        site.route = route
        return site

    async def _lease(self, queue: Queue, site: Destination, n: int) -> None:
        leases: list[Lease] = []
        try:
            leases = await self.spool.lease(queue[0], queue[1], self.clock(), n, LEASE_FOR)
            jobs = await self._jobs(leases)
        except Exception as exc:
            await self._lease_failed(queue, leases, exc)
            return
        finally:
            site.leasing -= n
            self._busy.discard(queue)
        self._rearm(queue, len(leases) == n)
        live = self._expire_stale(jobs)
        if self.hold.paused:  # leased before the pause: waits with the window's jobs
            self.hold.stash(site, live)
            return
        for job in live:
            site.ready.push(job)
        start_sessions(self, site)

    async def _lease_failed(self, queue: Queue, leases: list[Lease], exc: Exception) -> None:
        """Leasing or loading failed: give back what was leased, try the queue later."""
        if isinstance(exc, SpoolUnavailable):
            log.warning("spool unavailable; delivery paused", extra={"reason": exc.reason})
        else:
            log.error("leasing failed", exc_info=exc, extra={"queue": list(queue)})
            self.metrics.job_errors += 1
        if leases:  # else they would stay invisible for LEASE_FOR (an hour)
            await self.release(leases, self.clock() + SPOOL_RETRY)
        self.index.arm(queue, self.clock() + SPOOL_RETRY)

    def _rearm(self, queue: Queue, full: bool) -> None:
        if full:
            self.index.arm(queue, self.clock())
        else:
            self.spawn(self._rearm_from_spool(queue))
        self._wake.set()

    async def _rearm_from_spool(self, queue: Queue) -> None:
        try:
            nxt = await self.spool.next_due(queue[0], queue[1])
        except Exception as exc:  # the queue must not be forgotten until the next start
            log.warning("next due time unknown; queue retried", extra={"reason": str(exc)})
            nxt = self.clock() + SPOOL_RETRY
        if nxt is not None:
            self.index.arm(queue, nxt)
            self._wake.set()

    async def _jobs(self, leases: list[Lease]) -> list[Job]:
        return await load_jobs(self.spool, leases, self.clock())

    def _expire_stale(self, jobs: list[Job]) -> list[Job]:
        now = self.clock()
        live: list[Job] = []
        for job in jobs:
            if self.expired(job, now):
                self.settle(
                    [self.outcome(job, x, Expired("expired before an attempt")) for x in job.leases]
                )
            else:
                live.append(job)
        return live

    async def _fail_queue(self, queue: Queue, failure: RouteFailure) -> None:
        """A route lookup failed: bounce (permanent) or defer (temporary) the due work."""
        leases: list[Lease] = []
        try:
            leases = await self.spool.lease(
                queue[0], queue[1], self.clock(), LEASE_BATCH, LEASE_FOR
            )
            outcome = failure.outcome()
            jobs = await self._jobs(leases)
            settles = [self.outcome(job, x, outcome) for job in jobs for x in job.leases]
        except Exception as exc:
            await self._lease_failed(queue, leases, exc)
            return
        finally:
            self._busy.discard(queue)
        self.settle(settles)
        self._rearm(queue, len(leases) == LEASE_BATCH)

    # -- the settler: group-committed outcomes ------------------------------------------
    async def _settler(self) -> None:
        stop_deadline: float | None = None
        while True:
            if not self._settles:
                if self.stopping and not self._tasks:
                    return
                self._settle_wake.clear()
                try:
                    await asyncio.wait_for(self._settle_wake.wait(), 1.0)
                except TimeoutError:
                    continue
            batch, self._settles = self._settles, []
            if not batch:  # woken by an empty settle (an expiry pass that found nothing)
                continue
            try:
                with self.hold.settling():
                    await self.spool.settle(batch)
            except SpoolUnavailable as exc:
                # Keep the outcomes and retry: they are what the spool must learn.
                log.warning("spool unavailable; outcomes held", extra={"reason": exc.reason})
                self.hold.refused(exc.reason)
                self._held()  # pause at once: a session must not take its next job
                self._settles[:0] = batch
                if self.stopping:
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
        done: list[Settle] = []
        for s in batch:
            try:
                await self.spool.settle([s])
            except SpoolUnavailable as exc:
                self.hold.refused(exc.reason)
                self._settles.append(s)
            except Exception:
                self.metrics.settle_errors += 1
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
        if batch:
            self.hold.recorded()
        now = self.clock()
        for s in batch:
            lease = s.lease
            if s.retry_at:
                self.index.arm((lease.tenant, lease.domain), s.retry_at)
            if now > lease.expires_at + OVERRUN_GRACE:
                self.metrics.expiry_overruns += 1
        self._wake.set()

    # -- the reconciler: nothing outlives its max age -------------------------------
    async def _reconciler(self) -> None:
        interval = max(0.05, min(5.0, float(self.cfg.delivery.max_age) / 10))
        while not self.stopping:
            try:
                more = await self._expire_due()
            except Exception as exc:  # must not end the TaskGroup: that stops the node
                log.error("expiry pass failed; retrying", exc_info=exc)
                self.metrics.job_errors += 1
                more = False
            if not more:
                await self._sleep(interval)

    async def _expire_due(self) -> bool:
        """Settle deliveries past their max age; True when more may be waiting."""
        leases = await self.spool.expire(self.clock() - self.expiry_grace, 1000)
        expired = Expired("max age reached while queued")
        jobs = await self._jobs(leases)
        self.settle([self.outcome(job, lease, expired) for job in jobs for lease in job.leases])
        return len(leases) >= 1000

    async def _sleep(self, seconds: float) -> None:
        end = self.clock() + seconds
        while not self.stopping and self.clock() < end:
            await asyncio.sleep(min(0.2, seconds))

    # -- used by sessions --------------------------------------------------------------
    def expired(self, job: Job, now: float) -> bool:
        return now >= job.leases[0].expires_at + self.expiry_grace

    def room_freed(self, site: Destination) -> None:
        site.unpark(self.index, self.clock())
        self._wake.set()

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
