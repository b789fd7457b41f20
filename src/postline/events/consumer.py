"""Consumers of the event log, each reading forward from its own durable offset.

A :class:`Consumer` turns a batch of ``(offset, EventRecord)`` into its own output
(webhook posts, activity rows, stat rollups). A :class:`ConsumerRunner` owns one consumer's
loop: read after the offset, ``handle``, commit the offset, repeat; when the log has
nothing new it polls every ``poll`` seconds (the freshness bound). It runs on the event
loop beside the mail path but never inside it: a consumer that is slow or failing only
falls behind (its lag grows, ``GET /metrics`` and ``postline status`` show it), it never
slows an accept or a delivery.

At-least-once: the offset is committed after ``handle`` returned (in the background, the
newest offset winning, so the next batch does not wait for the spool's writer), so a crash
between the two replays that batch at the next start. A consumer that stores its output and
its offset in one transaction of its own store (the activity store does) returns that offset from
``resume`` and so sees nothing twice; the runner still commits to the log, where the
retention policy (events/retention.py) and the lag gauges read it.

A batch whose ``handle`` raises is retried after a delay that doubles up to ``retry_max``;
the runner never skips it (a consumer that must give up on a batch, as the webhook
dispatcher does after ``max_age``, decides so itself and returns normally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from postline.events.log import EventLog, read_as
from postline.model.events import EventRecord

log = logging.getLogger("postline.events")

Batch = Sequence[tuple[int, EventRecord]]
T = TypeVar("T")
STOP_GRACE = 2.0  # seconds a stopping runner waits for the batch in hand


class Consumer(Protocol):
    name: str  # the offset's key in the log's consumers table: "activity", "webhook:<id>"...

    async def resume(self) -> int | None:
        """The offset this consumer stored with its own output, or None to resume from
        the log's committed offset."""
        ...

    async def handle(self, events: Batch) -> None:
        """Process ``events`` (oldest first); their effect must be durable on return."""
        ...


@dataclass
class RunnerState:
    """What ``/metrics`` and ``postline status`` show of one consumer."""

    name: str
    offset: int = 0  # the last offset handled
    consumed: int = 0  # events handled since start
    errors: int = 0  # batches whose handle raised
    behind_since: float | None = None  # ts of the oldest event read but not yet handled
    caught_up: bool = False  # the last read returned less than a full batch


class ConsumerRunner:
    def __init__(
        self,
        events: EventLog,
        consumer: Consumer,
        *,
        batch: int = 5000,
        poll: float = 0.1,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.consumer = consumer
        self.batch = batch
        self.poll = poll
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self.state = RunnerState(consumer.name)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._to_commit: int | None = None  # the newest offset handled, not yet committed
        self._committing: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.consumer.name

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """New events may be there: read now rather than at the next poll."""
        self._wake.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop after the batch in hand; a ``handle`` still running after ``grace`` seconds
        (a webhook waiting out a retry delay) is cancelled: its batch was not committed,
        so the next start reads it again."""
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._committing is not None:
            await self._committing

    def lag_seconds(self, now: float) -> float:
        """Age of the oldest event read and not yet handled (0 when caught up)."""
        since = self.state.behind_since
        return 0.0 if since is None else max(0.0, now - since)

    async def _run(self) -> None:
        st = self.state
        own = await self._retrying(self.consumer.resume)
        st.offset = own if own is not None else await self._retrying(self._committed)
        delay = self.retry_min
        while not self._stop.is_set():
            try:
                events = await read_as(self.events, self.name, st.offset, self.batch)
            except Exception:
                log.exception("event log read failed", extra={"consumer": self.name})
                await self._sleep(delay)
                continue
            if not events:
                st.behind_since, st.caught_up = None, True
                await self._sleep(self.poll)
                continue
            st.behind_since = events[0][1].ts
            st.caught_up = len(events) < self.batch
            try:
                await self.consumer.handle(events)
            except Exception:
                st.errors += 1
                log.exception("event consumer failed; retrying", extra={"consumer": self.name})
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_min
            st.offset = events[-1][0]
            st.consumed += len(events)
            st.behind_since = None if st.caught_up else st.behind_since
            self._commit_soon(st.offset)
            if st.caught_up:
                await self._sleep(self.poll)

    def _commit_soon(self, offset: int) -> None:
        """Commit in the background, one commit in flight, the newest offset winning: the
        next batch is read and handled meanwhile (a commit waits for the spool's writer,
        which the mail path keeps busy). The committed offset only trails what was handled:
        still at-least-once."""
        self._to_commit = offset
        if self._committing is None or self._committing.done():
            self._committing = asyncio.get_running_loop().create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        while self._to_commit is not None:
            offset, self._to_commit = self._to_commit, None
            try:
                await self.events.commit(self.name, offset)
            except Exception:  # the next commit carries it
                log.exception("committing an offset failed", extra={"consumer": self.name})

    async def _committed(self) -> int:
        return await self.events.committed(self.name)

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_min
        while True:
            try:
                return await fn()
            except Exception:
                log.exception("consumer start failed; retrying", extra={"consumer": self.name})
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        if self._stop.is_set():
            raise asyncio.CancelledError


class RunnerSet:
    """Every running consumer of a node, by name: components add and remove theirs (a
    webhook created through the API starts its dispatcher here); retention and the lag
    gauges read them all."""

    def __init__(self, events: EventLog, clock: Callable[[], float] = time.time) -> None:
        self.events = events
        self.clock = clock
        self._runners: dict[str, ConsumerRunner] = {}

    def add(self, consumer: Consumer, *, batch: int = 5000, poll: float = 0.1) -> ConsumerRunner:
        if consumer.name in self._runners:
            raise ValueError(f"consumer {consumer.name!r} is already running")
        runner = ConsumerRunner(self.events, consumer, batch=batch, poll=poll, clock=self.clock)
        self._runners[consumer.name] = runner
        runner.start()
        return runner

    async def remove(self, name: str) -> None:
        runner = self._runners.pop(name, None)
        if runner is not None:
            await runner.stop()

    def get(self, name: str) -> ConsumerRunner | None:
        return self._runners.get(name)

    def all(self) -> list[ConsumerRunner]:
        return list(self._runners.values())

    def wake(self) -> None:
        for runner in self._runners.values():
            runner.wake()

    def floor(self) -> int | None:
        """The lowest offset every running consumer has handled (None: no consumer)."""
        return min((r.state.offset for r in self._runners.values()), default=None)

    async def close(self) -> None:
        for name in list(self._runners):
            await self.remove(name)
