"""Message-rate throttle of one egress path: a token bucket on an injected clock.

Strategy: the leaky/token bucket of qmgr's STRATEGIES comment and KumoMTA's
``max_message_rate`` (``ShapingConfig.max_message_rate``). The bucket holds up to
``burst`` tokens and refills at ``rate`` tokens per second; a delivery takes one token.
Over any interval of length ``t`` it therefore grants at most ``rate * t + burst``
tokens. The bucket never sleeps: ``delay_until_available`` returns the "sleep for d"
decision, like KumoMTA's ``timeq``, and the caller does the waiting (STYLE habit 5).

Decisions:

* ``rate == 0`` means unlimited (the config's convention): every take succeeds at once.
* A full bucket at start: a fresh path may send ``burst`` messages immediately.
* A request for more than ``burst`` tokens can never be met and raises ``ValueError``.
* Float rounding: a request succeeds when the missing tokens would arrive within
  ``SLACK`` seconds (1 µs — coarser than the float resolution of a Unix timestamp, about
  0.24 µs today), so a caller that sleeps exactly the returned delay is never refused.
  The shortfall is carried as a debt that the next refill repays, so over any interval
  the bucket runs ahead by at most ``rate * SLACK`` tokens in total.
* A clock that steps backwards adds no tokens (and takes none away).
"""

from __future__ import annotations

from collections.abc import Callable

SLACK = 1e-6  # seconds; absorbs float rounding between a delay and the retake


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; ``rate=0``: unlimited."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 (got {rate})")
        if rate > 0 and burst < 1:
            raise ValueError(f"burst must be >= 1 token (got {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def available(self) -> float:
        """Tokens in the bucket now (fractional); ``inf`` when unlimited."""
        if self.unlimited:
            return float("inf")
        return max(0.0, self._level(self._clock()))

    def set_rate(self, rate: float, burst: float) -> None:
        """Refill at ``rate`` from now on, holding at most ``burst`` (cluster mode: this
        node's share of the site's rate moved). Tokens banked so far are kept up to the
        new burst. Limited to limited only: ``rate`` 0 would mean unlimited."""
        if self.unlimited or rate <= 0 or burst < 1:
            raise ValueError(f"cannot set rate {rate} burst {burst} on a bucket of {self.rate}")
        now = self._clock()
        self._tokens = min(burst, self._level(now))
        self._stamp = max(self._stamp, now)
        self.rate = rate
        self.burst = burst

    def try_take(self, n: float = 1) -> bool:
        """Take ``n`` tokens if the bucket holds them now; ``False`` leaves it unchanged."""
        if self.unlimited:
            return True
        self._check(n)
        now = self._clock()
        level = self._level(now)
        if n - level > self.rate * SLACK:
            return False
        self._tokens = level - n  # may be a tiny debt (within SLACK), repaid by the refill
        self._stamp = max(self._stamp, now)
        return True

    def delay_until_available(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens are there (0 when they are): the "sleep for d"."""
        if self.unlimited:
            return 0.0
        self._check(n)
        missing = n - self._level(self._clock())
        return 0.0 if missing <= self.rate * SLACK else missing / self.rate

    def _level(self, now: float) -> float:
        elapsed = max(0.0, now - self._stamp)
        return min(self.burst, self._tokens + elapsed * self.rate)

    def _check(self, n: float) -> None:
        if n <= 0 or n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst}")
