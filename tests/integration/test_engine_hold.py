"""No new sends while outcomes cannot be recorded (deliver/hold.py): the engine in-process
over the in-memory spool and a real fake MTA. The spool refuses outcomes (a full disk, a
lost PostgreSQL) or hangs on them (a JetStream stream electing a leader) while leasing
still works: the MX gets no new transaction until outcomes are recorded again, then
every recipient once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from tests.integration.test_engine_faults import _accept, _wait

from postline import config
from postline.deliver.engine import Engine
from postline.deliver.mx import Router
from postline.spool.interface import Settle, SpoolUnavailable
from postline.spool.memory import MemorySpool
from postline.testing.fake_smtp import FakeSmtpServer

pytestmark = pytest.mark.timeout(60)

N = 16  # messages of one recipient each: 16 jobs, one connection, 4 a second (a burst of 4)


class Outage(MemorySpool):
    """``settle`` refuses (``mode`` "refuse") or hangs (``mode`` "hang") while ``down``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.down = asyncio.Event()
        self.up = asyncio.Event()
        self.refused = 0

    async def settle(self, settles: Sequence[Settle]) -> None:
        if self.down.is_set():
            if self.mode == "refuse":
                self.refused += 1
                raise SpoolUnavailable("disk full")
            await self.up.wait()
        await super().settle(settles)


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_no_new_transaction_reaches_the_mx_while_outcomes_are_held(mode: str) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = Outage(mode)
            shaping = {"max_connections": 1, "max_message_rate": 4.0}
            cfg = config.from_dict(
                {"delivery": {"routes": {"*": f"127.0.0.1:{mx.port}"}, "shaping": shaping}}
            )
            await _accept(spool, N)
            engine = Engine(spool, cfg, Router(cfg.delivery.routes, [], 1.0), lambda d: None)
            stop = asyncio.Event()
            task = asyncio.create_task(engine.run(stop))
            await _wait(lambda: len(mx.transactions) >= 2, 10)
            spool.down.set()  # outcomes from here on cannot be recorded
            await _wait(lambda: engine.metrics.send_pauses >= 1, 5)
            assert engine.metrics.send_pauses == 1
            await asyncio.sleep(0.3)  # the transaction a session was in may end
            sent = len(mx.transactions)
            await asyncio.sleep(1.5)  # 4 a second: 6 more would have gone out
            assert len(mx.transactions) == sent < N, "sent while outcomes were held"
            spool.down.clear()
            spool.up.set()
            await _wait(lambda: engine.metrics.delivered == N, 10)
            stop.set()
            await task
            counts = await spool.counts()
            assert (counts.delivered, counts.queued, counts.inflight) == (N, 0, 0)
            rcpts = sorted(r for t in mx.transactions for r in t.rcpts)
            assert rcpts == sorted(f"u{i}@example.com" for i in range(N))  # each once

    asyncio.run(scenario())
