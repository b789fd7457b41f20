"""Failed authentications per client address: counted, logged sparingly, slowed down.

An address that fails more than ``limit`` times within a window (a minute) has its further
401s held for ``delay`` seconds by the HTTP layer, which pauses that connection meanwhile
(the event loop goes on; a good key from the same address is not slowed). Keys have 256
bits, so this is not about guessing: it keeps a misconfigured or hostile client from
costing a key lookup and a log line per request. Each address is logged at most once per
window, never with the key. The table is bounded: past ``max_addresses`` the oldest
entry goes.

The SMTP relay also bans: past ``ban_after`` failures in a window the address is refused
outright (421 at connect) for ``ban_for`` seconds, as fail2ban would do for Postfix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("postline.auth")


class _Entry:
    __slots__ = ("count", "logged", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.logged = -1.0


class FailedAuth:
    def __init__(
        self,
        limit: int,
        delay: float,
        *,
        window: float = 60.0,
        max_addresses: int = 10_000,
        ban_after: int = 0,  # 0: never ban
        ban_for: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._delay = delay
        self._window = window
        self._max = max_addresses
        self._clock = clock
        self._table: dict[str, _Entry] = {}
        self._ban_after = ban_after
        self._ban_for = ban_for
        self._banned: dict[str, float] = {}  # address -> until (bounded like the table)
        self.failures = 0  # all failed authentications (the postline_auth_failures metric)
        self.delayed = 0  # of those, answered late because the address was over the limit

    def failed(self, remote: str, reason: str) -> float:
        """Record one failure from ``remote``; the seconds to hold its 401 (0: none)."""
        self.failures += 1
        now = self._clock()
        entry = self._entry(remote, now)
        entry.count += 1
        if now - entry.logged >= self._window:
            entry.logged = now
            log.warning(
                "authentication failed",
                extra={"remote": remote, "reason": reason, "failures_in_window": entry.count},
            )
        if self._ban_after and entry.count >= self._ban_after and remote not in self._banned:
            if len(self._banned) >= self._max:
                del self._banned[next(iter(self._banned))]
            self._banned[remote] = now + self._ban_for
            log.warning("address banned after failed authentications",
                        extra={"remote": remote, "seconds": self._ban_for})  # fmt: skip
        if entry.count <= self._limit or self._delay <= 0:
            return 0.0
        self.delayed += 1
        return self._delay

    def banned(self, remote: str) -> bool:
        """True while ``remote`` is banned (too many failures in one window)."""
        until = self._banned.get(remote)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._banned[remote]
        return False

    def _entry(self, remote: str, now: float) -> _Entry:
        entry = self._table.get(remote)
        if entry is None or now - entry.start >= self._window:
            if entry is None and len(self._table) >= self._max:
                del self._table[next(iter(self._table))]  # the oldest address
            fresh = _Entry(now)
            if entry is not None:
                fresh.logged = entry.logged  # a new window does not reopen the log
                del self._table[remote]  # re-insert: insertion order stays by age
            self._table[remote] = entry = fresh
        return entry

    def __len__(self) -> int:
        return len(self._table)
