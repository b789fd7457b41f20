"""Health of one destination site: dead-site detection, suspension and probing.

Strategy: Postfix 2.5's "dead destination" detection (``SCHEDULER_README``), kept apart
from concurrency feedback as Postfix does, combined with KumoMTA's *suspend* of a ready
queue. A site (the MX rollup of ``schedule``) is declared dead — ``SUSPENDED`` — when

* the caller reports that every MX host of the site failed at connection level in one
  attempt (``all_hosts_failed``), or
* ``failure_limit`` sessions in a row failed at connection or handshake level. The
  default, 5, is one pseudo-cohort at Postfix's initial concurrency (Postfix suspends
  after ``destination_concurrency_failed_cohort_limit`` = 1 failed cohort).

While suspended the site gets no connections except one probe at a time. The first probe
is due ``probe_interval_min`` after the suspension; each failed probe doubles the
interval up to ``probe_interval_max`` (the deferred-queue backoff Postfix uses before it
retries a dead destination). A successful probe — or any session that succeeds, such as
one already in flight when the site was suspended — resumes the site and resets both
the failure count and the probe interval.

The object only returns decisions ("may connect", "probe due", "sleep d"); the caller
opens the connections and reports what happened (STYLE habit 5).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

FAILURE_LIMIT = 5  # consecutive failed sessions that suspend a site


class SiteState(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class SiteHealth:
    """Counts connection-level failures of a site and suspends it; see the module doc."""

    def __init__(
        self,
        clock: Callable[[], float],
        probe_interval_min: float,
        probe_interval_max: float,
        failure_limit: int = FAILURE_LIMIT,
    ) -> None:
        if not 0 < probe_interval_min <= probe_interval_max:
            raise ValueError("need 0 < probe_interval_min <= probe_interval_max")
        if failure_limit < 1:
            raise ValueError(f"failure_limit must be >= 1 (got {failure_limit})")
        self._clock = clock
        self.probe_interval_min = probe_interval_min
        self.probe_interval_max = probe_interval_max
        self.failure_limit = failure_limit
        self.state = SiteState.ACTIVE
        self.failures = 0  # consecutive connection-level session failures
        self._interval = probe_interval_min
        self._probe_at = 0.0
        self._probing = False

    def can_connect(self) -> bool:
        """May the caller open an ordinary (non-probe) connection?"""
        return self.state is SiteState.ACTIVE

    def is_probe_due(self) -> bool:
        """Suspended, no probe in flight, and the probe time has come."""
        if self.state is SiteState.ACTIVE or self._probing:
            return False
        return self._clock() >= self._probe_at

    def delay_until_probe(self) -> float | None:
        """Seconds until the next probe ("sleep for d"); ``None`` when active or probing."""
        if self.state is SiteState.ACTIVE or self._probing:
            return None
        return max(0.0, self._probe_at - self._clock())

    def begin_probe(self) -> None:
        """The caller is opening the probe connection; no second probe until it reports."""
        self._probing = True

    def on_session_success(self) -> None:
        """A session got past the greeting and handshake: the site is alive."""
        self._resume()

    def on_session_failure(self) -> None:
        """A session failed at connection or handshake level (one MX host)."""
        self.failures += 1
        if self.failures >= self.failure_limit:
            self._suspend()

    def all_hosts_failed(self) -> None:
        """Every MX host of the site failed in one attempt: suspend at once."""
        self._suspend()

    def on_probe_success(self) -> None:
        self._resume()

    def on_probe_failure(self) -> None:
        """The probe failed: wait longer (doubling, capped) before the next one."""
        if self.state is SiteState.ACTIVE:  # resumed meanwhile: an ordinary failure
            self.on_session_failure()
            return
        self._probing = False
        self._interval = min(self.probe_interval_max, self._interval * 2)
        self._probe_at = self._clock() + self._interval

    def _suspend(self) -> None:
        if self.state is SiteState.SUSPENDED:
            return  # already dead; keep the probe schedule we have
        self.state = SiteState.SUSPENDED
        self._interval = self.probe_interval_min
        self._probe_at = self._clock() + self._interval

    def _resume(self) -> None:
        self.state = SiteState.ACTIVE
        self.failures = 0
        self._probing = False
        self._interval = self.probe_interval_min

    def __repr__(self) -> str:
        return f"SiteHealth(state={self.state.value}, failures={self.failures})"
