"""The stats consumer over a real ``stats.db``: counts and offset in one transaction, so a
restart resumes after exactly what was counted, even when the process is killed with -9
between (or inside) batches and the log never heard of the last commit."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from postline.events.consumer import ConsumerRunner
from postline.model.events import EventRecord, make_event
from postline.spool.memory import MemorySpool
from postline.stats.consumer import StatsConsumer
from postline.stats.metrics import first_key
from postline.stats.store import StatsStore

TS = 1_700_000_000.0
DAY = int(TS // 86400)


def ev(kind: str, i: int, tenant: str = "t", **extra: object) -> EventRecord:
    return make_event(
        kind, tenant=tenant, email=f"r{i}@x.example", ts=TS, sg_message_id=f"m{i}",
        smtp_id="<s>", extra=dict(extra),
    )  # fmt: skip


async def totals(store: StatsStore, tenant: str = "t") -> dict[str, int]:
    rows = await store.query(tenant, [""], (DAY - 1, DAY + 1))
    out: dict[str, int] = {}
    for _cat, _day, metric, n in rows:
        out[metric] = out.get(metric, 0) + n
    return out


def test_batch_then_reopen_resumes_at_its_offset(tmp_path: Path) -> None:
    async def run() -> None:
        store = await StatsStore.open(tmp_path)
        consumer = StatsConsumer(store)
        assert await consumer.resume() is None
        await consumer.handle([(7, ev("processed", 1)), (9, ev("delivered", 1))])
        await store.close()
        store = await StatsStore.open(tmp_path)
        assert await StatsConsumer(store).resume() == 9
        assert await totals(store) == {"processed": 1, "requests": 1, "delivered": 1}
        await store.close()

    asyncio.run(run())


def test_unique_opens_once_per_recipient_across_batches_and_restarts(tmp_path: Path) -> None:
    async def run() -> None:
        store = await StatsStore.open(tmp_path)
        c = StatsConsumer(store)
        await c.handle([(1, ev("open", 1)), (2, ev("open", 1)), (3, ev("click", 1))])
        await store.close()
        store = await StatsStore.open(tmp_path)
        c = StatsConsumer(store)
        await c.handle([(4, ev("open", 1)), (5, ev("open", 2)), (6, ev("click", 1))])
        assert await totals(store) == {
            "opens": 4, "unique_opens": 2, "clicks": 2, "unique_clicks": 1,
        }  # fmt: skip
        await store.close()

    asyncio.run(run())


def test_runner_restart_with_a_lost_log_commit_counts_nothing_twice(tmp_path: Path) -> None:
    """The runner commits to the log after ``handle``: a crash between the two leaves the
    log's offset behind. The next start must take stats.db's offset, not the log's."""

    async def run() -> None:
        log = MemorySpool()
        await log.record([ev("processed", i) for i in range(50)], [])
        store = await StatsStore.open(tmp_path)
        runner = ConsumerRunner(log, StatsConsumer(store), batch=20, poll=0.01)
        runner.start()
        while runner.state.offset < 50:
            await asyncio.sleep(0.01)
        await runner.stop()
        await log.commit("stats", 0)  # as if the log never heard of any batch
        await log.record([ev("delivered", i) for i in range(10)], [])
        runner = ConsumerRunner(log, StatsConsumer(store), batch=20, poll=0.01)
        runner.start()
        while runner.state.offset < 60:
            await asyncio.sleep(0.01)
        await runner.stop()
        assert await totals(store) == {"processed": 50, "requests": 50, "delivered": 10}
        await store.close()

    asyncio.run(run())


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from postline.model.events import make_event
    from postline.stats.consumer import StatsConsumer
    from postline.stats.store import StatsStore

    async def main(path, batch):
        store = await StatsStore.open(path)
        c = StatsConsumer(store)
        offset = await c.resume() or 0
        while True:
            events = [
                (offset + i + 1, make_event("processed", tenant="t", email="a@x.example",
                 ts=1_700_000_000.0, sg_message_id=f"m{offset + i}", smtp_id="<s>",
                 categories=["c1", "c2"]))
                for i in range(batch)
            ]
            await c.handle(events)
            offset += batch
            print(offset, flush=True)

    import pathlib
    asyncio.run(main(pathlib.Path(sys.argv[1]), int(sys.argv[2])))
    """
)


def test_kill_9_mid_stream_leaves_counts_equal_to_the_offset(tmp_path: Path) -> None:
    batch = 97
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(batch)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert child.stdout is not None
        for _ in range(5 + 7 * round_):  # some batches committed, then kill at once
            assert child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

        async def check() -> int:
            store = await StatsStore.open(tmp_path)
            offset = await StatsConsumer(store).resume()
            assert offset is not None and offset % batch == 0
            got = await totals(store)
            cats = await store.query("t", ["c1", "c2"], (DAY, DAY))
            await store.close()
            assert got == {"processed": offset, "requests": offset}
            assert sum(n for *_, n in cats) == 4 * offset
            return offset

        assert asyncio.run(check()) >= (5 + 7 * round_) * batch


def test_firsts_are_forgotten_after_their_window(tmp_path: Path) -> None:
    """The memory of unique opens is bounded: FIRSTS_DAYS after a first open it is gone."""
    from postline.stats.store import FIRSTS_DAYS

    later = TS + 86400 * (FIRSTS_DAYS + 1)

    async def run() -> None:
        store = await StatsStore.open(tmp_path)
        c = StatsConsumer(store)
        await c.handle([(1, ev("open", 1)), (2, ev("open", 2))])
        await c.handle([(3, ev("open", 1))])  # still remembered
        late = make_event("open", tenant="t", email="r9@x.example", ts=later,
                          sg_message_id="m9", smtp_id="<s>")  # fmt: skip
        await c.handle([(4, late)])
        await store.close()
        conn = sqlite3.connect(tmp_path / "stats.db")
        try:
            left = conn.execute("SELECT k FROM firsts").fetchall()
        finally:
            conn.close()
        assert left == [(first_key("t", "unique_opens", "m9", "r9@x.example"),)]
        store = await StatsStore.open(tmp_path)
        assert (await totals(store))["unique_opens"] == 2
        await store.close()

    asyncio.run(run())
