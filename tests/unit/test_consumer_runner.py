"""The consumer loop over a real (in-memory) event log: offsets, retries, lag, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from postline.events.consumer import Batch, RunnerSet
from postline.events.retention import Retention
from postline.model.events import PROCESSED, EventRecord, make_event
from postline.spool.interface import AcceptBatch
from postline.spool.memory import MemorySpool

T0 = 1_700_000_000.0


def events(n: int, start: int = 0, ts: float = T0) -> list[EventRecord]:
    return [
        make_event(
            PROCESSED,
            tenant="t1",
            email=f"r{i}@d.example",
            ts=ts + i,
            sg_message_id=f"m{i}.pl1.0",
            smtp_id="",
        )
        for i in range(start, start + n)
    ]


async def append(spool: MemorySpool, recs: Sequence[EventRecord]) -> None:
    await spool.accept(AcceptBatch("t1", b"", [], list(recs), T0, T0 + 3600))


class Recorder:
    def __init__(self, name: str, fail_times: int = 0, own: int | None = None) -> None:
        self.name = name
        self.seen: list[int] = []
        self.fail_times = fail_times
        self.calls = 0
        self.own = own
        self.got = asyncio.Event()

    async def resume(self) -> int | None:
        return self.own

    async def handle(self, batch: Batch) -> None:
        self.calls += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("receiver down")
        self.seen += [off for off, _ in batch]
        self.got.set()


async def wait_for(cond: object, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_consumer_reads_everything_in_order_and_commits() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(25))
        runners = RunnerSet(spool)
        rec = Recorder("c1")
        runners.add(rec, batch=10, poll=0.01)
        await wait_for(lambda: len(rec.seen) == 25)
        await append(spool, events(5, start=25))
        await wait_for(lambda: len(rec.seen) == 30)
        await runners.close()
        assert rec.seen == list(range(1, 31))
        assert await spool.committed("c1") == 30
        assert rec.calls == 4  # 10 + 10 + 5, then the 5 appended later

    asyncio.run(main())


def test_restart_resumes_from_the_committed_offset() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(12))
        await spool.commit("c1", 7)
        runners = RunnerSet(spool)
        rec = Recorder("c1")
        runners.add(rec, poll=0.01)
        await wait_for(lambda: len(rec.seen) == 5)
        await runners.close()
        assert rec.seen == [8, 9, 10, 11, 12]

    asyncio.run(main())


def test_own_offset_wins_over_the_log() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(6))
        await spool.commit("c1", 2)  # the log's copy lags behind the consumer's own store
        runners = RunnerSet(spool)
        rec = Recorder("c1", own=4)
        runners.add(rec, poll=0.01)
        await wait_for(lambda: len(rec.seen) == 2)
        await runners.close()
        assert rec.seen == [5, 6]

    asyncio.run(main())


def test_failing_batch_is_retried_never_skipped_and_lag_shows() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(3))
        runners = RunnerSet(spool)
        rec = Recorder("c1", fail_times=2)
        runner = runners.add(rec, poll=0.01)
        runner.retry_min = 0.01
        await wait_for(lambda: runner.state.errors >= 1)
        assert runner.lag_seconds(T0 + 100) >= 99  # the oldest unhandled event is T0
        assert await spool.committed("c1") == 0
        await wait_for(lambda: rec.seen == [1, 2, 3])
        assert runner.state.errors == 2
        assert runner.lag_seconds(T0 + 100) == 0.0
        await runners.close()

    asyncio.run(main())


def test_slow_consumer_does_not_hold_another() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(4))
        runners = RunnerSet(spool)
        stuck = Recorder("stuck", fail_times=10**6)
        fast = Recorder("fast")
        runners.add(stuck, poll=0.01)
        runners.add(fast, poll=0.01)
        await wait_for(lambda: fast.seen == [1, 2, 3, 4])
        assert runners.floor() == 0  # the stuck one holds the log
        await runners.close()

    asyncio.run(main())


def test_retention_keeps_what_a_consumer_has_not_handled() -> None:
    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(10))  # ts T0 .. T0 + 9
        runners = RunnerSet(spool)
        await spool.commit("c1", 6)
        rec = Recorder("c1", own=6, fail_times=10**6)  # stuck after offset 6
        runners.add(rec, poll=0.01)
        await wait_for(lambda: rec.calls > 0)
        retention = Retention(spool, runners, retention=5.0, clock=lambda: T0 + 8)
        # older than T0 + 3 and handled: offsets 1..3 (ts T0..T0+2)
        assert await retention.pass_once() == 3
        # later, everything is old enough; the consumer still holds 7..10
        retention.clock = lambda: T0 + 100
        assert await retention.pass_once() == 3
        assert [off for off, _ in await spool.read(0, 100)] == [7, 8, 9, 10]
        await runners.close()
        # no consumer: age alone decides
        assert await retention.pass_once() == 4
        assert retention.pruned == 10

    asyncio.run(main())


def test_stop_cancels_a_handle_that_waits_and_commits_nothing() -> None:
    class Sleeper:
        name = "sleeper"

        async def resume(self) -> int | None:
            return None

        async def handle(self, batch: Batch) -> None:
            await asyncio.sleep(3600)  # a webhook waiting out its retry delay

    async def main() -> None:
        spool = MemorySpool()
        await append(spool, events(2))
        runners = RunnerSet(spool)
        runner = runners.add(Sleeper(), poll=0.01)
        await wait_for(lambda: runner.state.behind_since is not None)
        await asyncio.wait_for(runner.stop(grace=0.05), 5)
        assert await spool.committed("sleeper") == 0

    asyncio.run(main())


def test_a_slow_offset_commit_does_not_hold_the_reads() -> None:
    class SlowCommits(MemorySpool):
        gate = asyncio.Event()

        async def commit(self, consumer: str, offset: int) -> None:
            await self.gate.wait()  # the spool's writer is busy with the mail path
            await super().commit(consumer, offset)

    async def main() -> None:
        spool = SlowCommits()
        await append(spool, events(30))
        runners = RunnerSet(spool)
        rec = Recorder("c1")
        runners.add(rec, batch=10, poll=0.01)
        await wait_for(lambda: len(rec.seen) == 30)  # all three batches, no commit done yet
        assert await spool.committed("c1") == 0
        spool.gate.set()
        await runners.close()
        assert await spool.committed("c1") == 30  # the newest offset won

    asyncio.run(main())
