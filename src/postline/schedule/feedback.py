"""Adaptive connection concurrency of one destination site (concurrency feedback).

Strategy: Postfix 2.5's destination concurrency feedback (``README_FILES/SCHEDULER_README``,
``qmgr_feedback.c``) plus the multiplicative back-off of PowerMTA's "backoff mode" and
Momentum's Adaptive Delivery. The window ``limit`` is the number of connections the
site may have open at once; it starts at ``initial`` and moves inside ``[1, maximum]``:

* **Success** — positive feedback ``g(N) = 1/N`` per delivery with hysteresis 1: the
  window grows by one after ``N`` (= the current ``limit``) successes, one pseudo-cohort,
  which is linear growth in time (Postfix measured exponential +1-per-success growth to
  overshoot). Postfix's safety rule applies when the caller passes ``busy``: no growth
  unless ``limit < busy + initial``, so an idle site's window does not creep up to a
  level that was never exercised.
* **Connection or handshake failure** — Postfix's negative feedback ``f(N) = 1/N`` with
  the *reverse* hysteresis cycle: the window shrinks by one at the *start* of a run of
  failures, then absorbs the next ``N - 1`` failures before shrinking again, so overload
  is corrected at once without collapsing on one bad cohort.
* **Throttling reply** (421, "too many connections", "rate limited", 4.7.x — see
  ``deliver.classify``) — the receiver asked us to slow down, so the window halves
  (multiplicative decrease, as in TCP's AIMD and PowerMTA's backoff). Hysteresis: the
  connections already open when the window halved were opened under the old limit and
  will report the same complaint, so the next ``old_limit - 1`` throttle reports are
  absorbed instead of halving again and again down to 1.

Declaring the site dead is a separate mechanism, as in Postfix: ``schedule.site``.
"""

from __future__ import annotations

INITIAL_CONCURRENCY = 5  # Postfix's initial_destination_concurrency


class ConcurrencyWindow:
    """The allowed number of concurrent connections to one site, always in [1, maximum]."""

    def __init__(self, initial: int, maximum: int) -> None:
        if maximum < 1:
            raise ValueError(f"maximum concurrency must be >= 1 (got {maximum})")
        self.maximum = maximum
        self.initial = min(max(1, initial), maximum)
        self._limit = self.initial
        self._successes = 0  # since the last change; the window grows when it reaches limit
        self._failure_credit = 0  # connect failures still absorbed by the current run
        self._throttle_credit = 0  # throttle reports still absorbed after a halving

    @classmethod
    def for_maximum(cls, maximum: int) -> ConcurrencyWindow:
        """A window starting at Postfix's initial concurrency (5), or lower if capped."""
        return cls(INITIAL_CONCURRENCY, maximum)

    @property
    def limit(self) -> int:
        return self._limit

    def on_success(self, busy: int | None = None) -> None:
        """A delivery completed without connection or handshake failure."""
        self._absorb_throttle()
        if busy is not None and self._limit >= busy + self.initial:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._grow()

    def on_connect_failure(self) -> None:
        """A connection or handshake failed (timeout, refused, dropped greeting)."""
        self._absorb_throttle()
        if self._failure_credit > 0:
            self._failure_credit -= 1
            return
        old = self._limit
        self._shrink_to(old - 1)
        self._failure_credit = old - 1

    def on_throttle(self) -> None:
        """The site replied that we send too much or too fast: halve the window."""
        if self._throttle_credit > 0:
            self._throttle_credit -= 1
            return
        old = self._limit
        self._shrink_to(old // 2)
        self._throttle_credit = old - 1

    def _grow(self) -> None:
        self._successes = 0
        self._failure_credit = 0
        self._limit = min(self.maximum, self._limit + 1)

    def _shrink_to(self, limit: int) -> None:
        self._successes = 0
        self._limit = max(1, limit)

    def _absorb_throttle(self) -> None:
        # Every report from the old cohort uses up one slot of the throttle hysteresis.
        self._throttle_credit = max(0, self._throttle_credit - 1)

    def __repr__(self) -> str:
        return f"ConcurrencyWindow(limit={self._limit}, maximum={self.maximum})"
