"""cancel_and_wait: a task that loses a cancellation (as one inside Python 3.11's
asyncio.wait_for can, bpo-42130) is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from postline.tasks import RECANCEL, cancel_and_wait


async def _loses_one_cancel(parked: asyncio.Event) -> None:
    """Swallows the first cancellation (as a dropped one looks), then waits forever."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    parked.set()
    await asyncio.Event().wait()


def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    async def main() -> None:
        parked = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_loses_one_cancel(parked))
        await asyncio.sleep(0)
        # the pattern it replaces: one cancel, then waiting, never ends
        task.cancel()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        assert parked.is_set() and not task.done()
        await asyncio.wait_for(cancel_and_wait(task), 2 * RECANCEL + 1)
        assert task.cancelled()

    asyncio.run(main())


def test_ended_failed_and_missing_tasks() -> None:
    async def boom() -> None:
        raise ValueError("x")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        failed = loop.create_task(boom())
        done = loop.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await cancel_and_wait(failed, done, None)  # its exception is read, not raised
        assert failed.done() and not failed.cancelled()

    asyncio.run(main())


def test_the_callers_own_cancellation_propagates() -> None:
    async def main() -> None:
        parked = asyncio.Event()
        loop = asyncio.get_running_loop()
        stubborn = loop.create_task(_loses_one_cancel(parked))
        await asyncio.sleep(0)
        stopping = loop.create_task(cancel_and_wait(stubborn))
        await asyncio.sleep(0.05)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        await cancel_and_wait(stubborn)

    asyncio.run(main())
