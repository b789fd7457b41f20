"""The pump's work on one due queue: its route, its site, a lease into the site's window.

A due (tenant, domain) queue is looked up in a short route cache (the lookup itself runs
in a task of its own, shared by every queue of the domain); a queue whose site has no room
is parked on that site, else up to ``LEASE_BATCH`` of its deliveries are leased, loaded
and pushed into the site's ready window, and sessions are started for them. A queue with
a lease in progress is *busy*: that lease re-arms it. A failed route lookup bounces
(permanent) or defers (temporary) the queue's due work without a session.

Nothing here blocks the pump: every spool call and DNS lookup runs in a task the engine
owns (head-of-line isolation, :mod:`postline.deliver.engine`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from postline.deliver.jobs import load_jobs
from postline.deliver.mx import Route, RouteFailure
from postline.deliver.session import start_sessions
from postline.model.outcomes import Expired
from postline.schedule.destination import Destination
from postline.schedule.queues import Queue
from postline.schedule.ready import Job
from postline.spool.interface import Lease, SpoolUnavailable

if TYPE_CHECKING:
    from postline.deliver.engine import Engine

log = logging.getLogger("postline.deliver")

LEASE_FOR = 3600.0  # visibility timeout of a lease; far above any session's duration
LEASE_BATCH = 256  # deliveries leased per spool call
SPOOL_RETRY = 1.0  # seconds before retrying a spool the disk refused


class Dispatcher:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._routes: dict[str, tuple[float, Route | RouteFailure]] = {}
        self._resolving: dict[str, list[Queue]] = {}
        self._busy: set[Queue] = set()  # queues with a lease in progress

    def dispatch_due(self, now: float) -> None:
        index = self._engine.index
        for queue in index.pop_due(now):
            try:
                self._dispatch(queue, now)
            except Exception as exc:  # one queue's trouble must not stop every queue
                log.error("dispatch failed", exc_info=exc, extra={"queue": list(queue)})
                self._engine.metrics.job_errors += 1
                index.arm(queue, now + SPOOL_RETRY)

    def _dispatch(self, queue: Queue, now: float) -> None:
        if queue in self._busy:
            return  # the running lease re-arms it
        route = self._route_of(queue, now)
        if route is None:
            return
        engine = self._engine
        if isinstance(route, RouteFailure):
            self._busy.add(queue)
            engine.spawn(self._fail_queue(queue, route))
            return
        site = self._site(route, queue[1])
        room = site.room_for_lease()
        if room <= 0:
            site.park(queue, engine.index, now)
            return
        self._busy.add(queue)
        site.leasing += min(room, LEASE_BATCH)
        engine.spawn(self._lease(queue, site, min(room, LEASE_BATCH)))

    # -- routes and sites ------------------------------------------------------------
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
        self._engine.spawn(self._resolve(domain))
        return None

    async def _resolve(self, domain: str) -> None:
        engine = self._engine
        result: Route | RouteFailure
        try:
            result = await engine.router.route(domain)
        except Exception as exc:  # a resolver bug must not strand the domain's queues
            log.exception("route lookup failed", extra={"domain": domain})
            result = RouteFailure("error", False, f"451 4.4.3 route lookup failed: {exc}")
        queues = self._resolving.pop(domain, [])
        # The router caches for the DNS TTL; this cache only spares a task per dispatch.
        self._routes[domain] = (engine.clock() + 1.0, result)
        for q in queues:
            engine.index.arm(q, engine.clock())
        engine.wake.set()

    def _site(self, route: Route, domain: str) -> Destination:
        engine = self._engine
        # engine.sites, read each time: a cluster node swaps in its own table before the
        # engine runs (cluster/shared_limits.py).
        site = engine.sites.get(route.site)
        if site is None:
            cfg = engine.cfg
            shaping = cfg.shaping_for(domain)
            probe = (float(cfg.delivery.retry_min), float(cfg.delivery.retry_max))
            site = Destination(route.site, route, shaping, cfg.delivery.window, engine.clock, probe)
            engine.sites[route.site] = site
        site.route = route
        return site

    # -- leases ------------------------------------------------------------------------
    async def _lease(self, queue: Queue, site: Destination, n: int) -> None:
        engine = self._engine
        leases: list[Lease] = []
        try:
            leases = await engine.spool.lease(queue[0], queue[1], engine.clock(), n, LEASE_FOR)
            jobs = await load_jobs(engine.spool, leases, engine.clock())
        except Exception as exc:
            await self._lease_failed(queue, leases, exc)
            return
        finally:
            site.leasing -= n
            self._busy.discard(queue)
        self._rearm(queue, len(leases) == n)
        live = self._expire_stale(jobs)
        if engine.hold.paused:  # leased before the pause: waits with the window's jobs
            engine.hold.stash(site, live)
            return
        for job in live:
            site.ready.push(job)
        start_sessions(engine, site)

    async def _lease_failed(self, queue: Queue, leases: list[Lease], exc: Exception) -> None:
        """Leasing or loading failed: give back what was leased, try the queue later."""
        engine = self._engine
        if isinstance(exc, SpoolUnavailable):
            log.warning("spool unavailable; delivery paused", extra={"reason": exc.reason})
        else:
            log.error("leasing failed", exc_info=exc, extra={"queue": list(queue)})
            engine.metrics.job_errors += 1
        if leases:  # else they would stay invisible for LEASE_FOR (an hour)
            await engine.release(leases, engine.clock() + SPOOL_RETRY)
        engine.index.arm(queue, engine.clock() + SPOOL_RETRY)

    def _rearm(self, queue: Queue, full: bool) -> None:
        engine = self._engine
        if full:
            engine.index.arm(queue, engine.clock())
        else:
            engine.spawn(self._rearm_from_spool(queue))
        engine.wake.set()

    async def _rearm_from_spool(self, queue: Queue) -> None:
        engine = self._engine
        try:
            nxt = await engine.spool.next_due(queue[0], queue[1])
        except Exception as exc:  # the queue must not be forgotten until the next start
            log.warning("next due time unknown; queue retried", extra={"reason": str(exc)})
            nxt = engine.clock() + SPOOL_RETRY
        if nxt is not None:
            engine.index.arm(queue, nxt)
            engine.wake.set()

    def _expire_stale(self, jobs: list[Job]) -> list[Job]:
        engine = self._engine
        now = engine.clock()
        live: list[Job] = []
        for job in jobs:
            if engine.expired(job, now):
                engine.settle(
                    [
                        engine.outcome(job, x, Expired("expired before an attempt"))
                        for x in job.leases
                    ]
                )
            else:
                live.append(job)
        return live

    async def _fail_queue(self, queue: Queue, failure: RouteFailure) -> None:
        """A route lookup failed: bounce (permanent) or defer (temporary) the due work."""
        engine = self._engine
        leases: list[Lease] = []
        try:
            leases = await engine.spool.lease(
                queue[0], queue[1], engine.clock(), LEASE_BATCH, LEASE_FOR
            )
            outcome = failure.outcome()
            jobs = await load_jobs(engine.spool, leases, engine.clock())
            settles = [engine.outcome(job, x, outcome) for job in jobs for x in job.leases]
        except Exception as exc:
            await self._lease_failed(queue, leases, exc)
            return
        finally:
            self._busy.discard(queue)
        engine.settle(settles)
        self._rearm(queue, len(leases) == LEASE_BATCH)
