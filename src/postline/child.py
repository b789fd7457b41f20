"""Helpers for the node's worker processes (event pipeline, SMTP relay)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal

log = logging.getLogger("postline")

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The kernel kills this process when the node's dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


RESTART_MIN, RESTART_MAX = 1.0, 30.0  # seconds between restarts of a worker that died


class Backoff:
    """The wait before starting a worker again: doubling from ``RESTART_MIN`` up to
    ``RESTART_MAX`` while it keeps dying, back to the minimum after a long run (not a
    crash loop)."""

    def __init__(self) -> None:
        self._delay = RESTART_MIN

    def after(self, ran_for: float) -> float:
        """The delay to wait now, for a worker that ran ``ran_for`` seconds."""
        if ran_for > 10 * RESTART_MAX:
            self._delay = RESTART_MIN
        delay = self._delay
        self._delay = min(self._delay * 2, RESTART_MAX)
        return delay


async def stop_process(proc: asyncio.subprocess.Process, timeout: float, what: str) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        log.error("the %s did not stop; killing it", what)
        proc.kill()
        await proc.wait()
