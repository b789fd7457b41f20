"""One deadline per connection on one event-loop timer (no task per connection).

A connection's deadline moves with each phase of each request (headers, body, idle), so
re-arming a loop timer every time would cost a cancel and a schedule per move. Most moves
are later than the armed time, so the timer is re-armed only when the deadline moves
earlier; when it fires early it sleeps on to the current deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_at", "_expired", "_loop", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the timer fires
        self._when: float | None = None  # the deadline; None: none

    def set(self, seconds: float) -> None:
        """``expired`` is called ``seconds`` from now unless moved or cleared before."""
        when = self._loop.time() + seconds
        self._when = when
        if self._timer is None or when < self._at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._fire)
            self._at = when

    def clear(self) -> None:
        """No deadline (the timer, if armed, fires once more and finds none)."""
        self._when = None

    def cancel(self) -> None:
        """For good: the connection is gone."""
        self._when = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        when = self._when
        if when is None:
            return
        if self._loop.time() < when:  # moved later since armed
            self._timer = self._loop.call_at(when, self._fire)
            self._at = when
            return
        self._when = None
        self._expired()
