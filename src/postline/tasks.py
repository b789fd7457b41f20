"""Stopping background tasks for good.

``task.cancel()`` then ``await task`` is not enough on Python 3.11: ``asyncio.wait_for``
returns a result it already has and drops a cancellation that arrives in the same turn of
the event loop (bpo-42130, fixed in 3.12), and nats-py runs every request (KV writes,
JetStream API calls) inside ``wait_for``. A loop whose cancel was dropped goes on to its
next sleep or wait, and whoever awaited it waits forever: a JetStream spool's ``close``
hung that way (tests/integration/test_jetstream_spool_close.py). :func:`cancel_and_wait`
cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL = 0.5  # seconds between cancellations of a task that has not ended


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None entries are skipped) and return once all have ended; a
    task still running RECANCEL seconds after a cancel is cancelled again. What they
    raised is read and dropped (they were being stopped); a cancellation of the caller
    propagates."""
    live = [t for t in tasks if t is not None]
    pending = {t for t in live if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL)
        for task in pending:
            task.cancel()
    for task in live:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
