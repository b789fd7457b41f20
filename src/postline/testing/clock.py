"""A virtual clock for scheduling tests: time moves only when the test says so.

The scheduling policies (``schedule.throttle``, ``schedule.site``) take their clock as a
zero-argument function returning seconds, so production passes ``time.monotonic`` and
tests pass a ``VirtualClock`` (it is callable) — nothing sleeps (STYLE habit 5; trio's
``MockClock`` is the model).
"""

from __future__ import annotations


class VirtualClock:
    """Seconds that advance only through ``advance`` / ``advance_to``; never backwards."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, dt: float) -> float:
        """Move forward by ``dt`` seconds and return the new time."""
        if dt < 0:
            raise ValueError(f"a clock does not go backwards (dt={dt})")
        self._now += dt
        return self._now

    def advance_to(self, when: float) -> float:
        """Jump to ``when`` (a deadline, like trio's autojump); never moves backwards."""
        self._now = max(self._now, float(when))
        return self._now

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"
