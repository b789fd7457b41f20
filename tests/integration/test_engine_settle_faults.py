"""The settler: one outcome the spool refuses with an error cannot hold the others, and a
node stops even when the spool refuses every write (it hung on SIGTERM before)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from tests.integration.test_engine_faults import _accept, _wait

from postline import config
from postline.deliver import settler as settler_mod
from postline.deliver.engine import Engine
from postline.deliver.mx import Router
from postline.spool.interface import Settle, SpoolUnavailable
from postline.spool.memory import MemorySpool
from postline.testing.fake_smtp import FakeSmtpServer

pytestmark = pytest.mark.timeout(60)


class SettleFaults(MemorySpool):
    """``settle`` raises for any batch holding ``bad`` (an error), or refuses every write
    once ``full`` is set (as a full or read-only disk does)."""

    def __init__(self, bad: str = "") -> None:
        super().__init__()
        self.bad = bad
        self.full = False

    async def settle(self, settles: Sequence[Settle]) -> None:
        if self.full:
            raise SpoolUnavailable("disk full")
        if any(s.lease.rcpt == self.bad for s in settles):
            raise ValueError("constraint failed")
        await super().settle(settles)


def _engine(spool: MemorySpool, mx: FakeSmtpServer) -> Engine:
    cfg = config.from_dict({"delivery": {"routes": {"*": f"127.0.0.1:{mx.port}"}}})
    return Engine(spool, cfg, Router(cfg.delivery.routes, [], 1.0), lambda d: None)


def test_one_outcome_that_fails_to_settle_does_not_hold_the_others() -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = SettleFaults(bad="u3@example.com")
            await _accept(spool, 8)
            engine = _engine(spool, mx)
            stop = asyncio.Event()
            task = asyncio.create_task(engine.run(stop))
            await _wait(lambda: engine.metrics.settle_errors >= 1 or task.done(), 20)
            await _wait(lambda: len(mx.transactions) >= 8, 20)
            for _ in range(50):
                counts = await spool.counts()
                if counts.delivered == 7:
                    break
                await asyncio.sleep(0.05)
            assert not task.done()
            assert counts.delivered == 7  # every other outcome was recorded
            assert counts.inflight == 1  # the bad one keeps its lease: retried, not lost
            assert engine.metrics.settle_errors == 1
            stop.set()
            await task

    asyncio.run(scenario())


def test_stop_ends_while_the_spool_refuses_every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settler_mod, "STOP_SETTLE_GRACE", 1.0)

    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = SettleFaults()
            spool.full = True  # the outcomes of these deliveries can never be written
            await _accept(spool, 5)
            engine = _engine(spool, mx)
            stop = asyncio.Event()
            task = asyncio.create_task(engine.run(stop))
            await _wait(lambda: len(mx.transactions) >= 5, 20)
            stop.set()
            await asyncio.wait_for(task, 30)  # before the fix: never returned
            assert (await spool.counts()).inflight == 5  # leased: sent again after a restart

    asyncio.run(scenario())
