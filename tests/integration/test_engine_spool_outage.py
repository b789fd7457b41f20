"""The engine in-process over the in-memory spool: a storage outage pauses, loses nothing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tests.conftest import simple_mail

from postline import config
from postline.accept.expand import expand
from postline.deliver.engine import Engine
from postline.deliver.mx import Router
from postline.model.mail import decode_request
from postline.spool.memory import MemorySpool
from postline.testing.fake_smtp import FakeSmtpServer

pytestmark = pytest.mark.timeout(30)


async def _wait(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("outage", [0.0, 1.5])
def test_outcomes_are_held_until_the_spool_takes_them(outage: float) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(greeting_delay=0.3) as mx:
            spool = MemorySpool()
            cfg = config.from_dict(
                {"delivery": {"routes": {"*": f"127.0.0.1:{mx.port}"}, "retry_min": "1s"}}
            )
            mail = simple_mail()
            mail["personalizations"] = [{"to": [{"email": f"u{i}@example.com"}]} for i in range(5)]
            batch = expand(
                decode_request(json.dumps(mail).encode()),
                tenant="t",
                node="n",
                host="h",
                now=time.time(),
                max_age=3600,
                x_message_id="x" * 22,
            )
            await spool.accept(batch)
            engine = Engine(spool, cfg, Router(cfg.delivery.routes, [], 1.0), lambda d: None)
            stop = asyncio.Event()
            task = asyncio.create_task(engine.run(stop))
            await asyncio.sleep(0.1)  # leased, connecting (the greeting takes 0.3 s)
            if outage:
                spool.unavailable = "disk full"
                await _wait(lambda: len(mx.transactions) == 1, 5)
                await asyncio.sleep(outage)
                assert (await spool.counts()).delivered == 0  # held, not recorded, not lost
                spool.unavailable = None
            await _wait(lambda: engine.metrics.delivered == 5, 10)
            stop.set()
            await task  # the settler flushes what it holds before the engine returns
            counts = await spool.counts()
            assert (counts.delivered, counts.queued, counts.deferred) == (5, 0, 0)
            assert sorted(r for t in mx.transactions for r in t.rcpts) == [
                f"u{i}@example.com" for i in range(5)
            ]  # delivered once each: held outcomes are not retried deliveries

    asyncio.run(scenario())
