"""Helpers for the node's worker processes (event pipeline, SMTP relay)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import time

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


class Supervised:
    """A worker process the node starts, restarts with :class:`Backoff` when it exits,
    and stops: the loop shared by the event pipeline's and the SMTP relay's supervisors.
    A subclass gives ``_spawn`` (start the process and wait for :meth:`_ready`), and may
    give ``_running`` (a task for the life of one process, cancelled when it exits) and
    ``_went_down`` (after it exited)."""

    what = "worker"  # in log lines: "the <what> exited"

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.proc: asyncio.subprocess.Process | None = None
        self.up = False
        self.restarts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def _spawn(self) -> asyncio.subprocess.Process:
        raise NotImplementedError

    def _running(self, proc: asyncio.subprocess.Process) -> asyncio.Task[None] | None:
        return None

    def _went_down(self) -> None:
        self.up = False

    def _supervise_soon(self) -> None:
        if self._watch is None and not self._stopping:
            self._watch = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            started = time.monotonic()
            proc = await self._spawn()
            running = self._running(proc)
            code = await proc.wait()
            if running is not None:
                running.cancel()
            self._went_down()
            if self._stopping:
                return
            delay = backoff.after(time.monotonic() - started)
            self.log.error(
                f"the {self.what} exited; starting it again",
                extra={"pid": proc.pid, "code": code, "in_seconds": delay},
            )
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _ready(self, proc: asyncio.subprocess.Process, timeout: float) -> bool:
        """Wait for the worker's ``ready`` line; kill a worker that does not say it."""
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if line.strip() == b"ready":
            self.up = True
            self.log.info(f"{self.what} started", extra={"pid": proc.pid})
            return True
        if not self._stopping:
            self.log.error(f"the {self.what} did not start", extra={"pid": proc.pid})
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        return False

    async def _stop_process(self, timeout: float) -> None:
        """No restart from now on; SIGTERM the worker (SIGKILL after ``timeout``), then
        end the supervising task."""
        self._stopping = True
        if self.proc is not None:
            await stop_process(self.proc, timeout, self.what)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
