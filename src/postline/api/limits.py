"""Caps on open HTTP connections, in all and per client address, within the fd limit.

A node must never run out of file descriptors: accept() failing with EMFILE stalls every
listener, and the spool, DNS and outbound SMTP need descriptors too. So the soft
RLIMIT_NOFILE is raised to the hard limit at start, and HTTP connections get at most half
of it whatever the configured cap; a connection over a cap is answered 503 and closed.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("postline.http")


def connection_cap(wanted: int, soft_fd_limit: int) -> int:
    """The cap that fits: HTTP connections take at most half of the descriptors."""
    return max(1, min(wanted, soft_fd_limit // 2))


def fit_fd_limit(wanted: int) -> int:
    """Raise the soft fd limit to the hard one if ``wanted`` needs it; the cap that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if connection_cap(wanted, soft) < wanted and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # hard may be RLIM_INFINITY where that is refused
            log.warning("cannot raise the fd limit", extra={"soft": soft, "error": str(exc)})
    cap = connection_cap(wanted, soft if soft != resource.RLIM_INFINITY else 2 * wanted)
    if cap < wanted:
        log.warning(
            "http.max_connections lowered to fit the fd limit; raise the limit (ulimit -n)",
            extra={"max_connections": cap, "configured": wanted, "fd_limit": soft},
        )
    return cap


class ConnectionGuard:
    """Counts open connections per address; ``admit`` says whether one more may stay."""

    __slots__ = ("_by_ip", "_max_per_ip", "_max_total", "open", "refused")

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self._max_total = max_total
        self._max_per_ip = max_per_ip
        self._by_ip: dict[str, int] = {}
        self.open = 0
        self.refused = 0

    def admit(self, ip: str) -> bool:
        """Count a new connection from ``ip`` if it fits under both caps."""
        held = self._by_ip.get(ip, 0)
        if self.open >= self._max_total or held >= self._max_per_ip:
            self.refused += 1
            return False
        self._by_ip[ip] = held + 1
        self.open += 1
        return True

    def release(self, ip: str) -> None:
        """A connection that ``admit`` counted has closed."""
        self.open -= 1
        held = self._by_ip.pop(ip) - 1
        if held:  # an address without connections leaves the table: it stays bounded
            self._by_ip[ip] = held
