"""No exception in one delivery job, lease or expiry pass can hold a slot, a lease or the
engine (issue 10, item 1b): the engine in-process over the in-memory spool, a real fake MTA.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from tests.conftest import simple_mail

from postline import config
from postline.accept.expand import expand
from postline.deliver.dkim import DkimSigner
from postline.deliver.engine import Engine
from postline.deliver.mx import Router
from postline.model.events import BOUNCE, DEFERRED, DELIVERED, event_json
from postline.model.mail import decode_request
from postline.spool.interface import Lease, StoredMessage
from postline.spool.memory import MemorySpool
from postline.testing.fake_smtp import FakeSmtpServer

pytestmark = pytest.mark.timeout(60)


class FaultySpool(MemorySpool):
    """Raises an unforeseen error from ``load`` or ``expire`` the first ``n`` times."""

    def __init__(self, load_faults: int = 0, expire_faults: int = 0) -> None:
        super().__init__()
        self.load_faults = load_faults
        self.expire_faults = expire_faults

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        if self.load_faults:
            self.load_faults -= 1
            raise RuntimeError("disk image is malformed")
        return await super().load(message_ids)

    async def expire(self, now: float, limit: int) -> list[Lease]:
        if self.expire_faults:
            self.expire_faults -= 1
            raise RuntimeError("database is locked")
        return await super().expire(now, limit)


class FailingSigner:
    """Stands in for a DkimSigner whose key or library breaks on the first messages."""

    def __init__(self, faults: int) -> None:
        self.faults = faults

    def sign(self, message: bytes) -> bytes:
        if self.faults:
            self.faults -= 1
            raise OSError("HSM unreachable")
        return b""


async def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _accept(spool: MemorySpool, n: int) -> None:
    mail = simple_mail()
    mail["personalizations"] = [{"to": [{"email": f"u{i}@example.com"}]} for i in range(n)]
    req = decode_request(json.dumps(mail).encode())
    now = time.time()
    batch = expand(
        req, tenant="t", node="n", host="h", now=now, max_age=3600, x_message_id="x" * 22
    )
    await spool.accept(batch)


async def _events(spool: MemorySpool, kind: str) -> list[dict[str, Any]]:
    return [event_json(rec) for _, rec in await spool.read(0, 10_000) if rec.event == kind]


async def _run_engine(
    spool: MemorySpool,
    mx: FakeSmtpServer,
    until: Callable[[Engine], bool],
    signer: Callable[[str], DkimSigner | None] = lambda d: None,
    **delivery: object,
) -> Engine:
    cfg = config.from_dict(
        {
            "delivery": {
                "routes": {"*": f"127.0.0.1:{mx.port}"},
                "retry_min": "200ms",
                "retry_max": "400ms",
                "window": 3,
                **delivery,
            }
        }
    )
    engine = Engine(spool, cfg, Router(cfg.delivery.routes, [], 1.0), signer)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    await _wait(lambda: until(engine) or task.done(), 20)
    assert not task.done(), task.exception()  # the engine survived
    stop.set()
    await task
    return engine


def test_a_failed_load_gives_the_leases_back() -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = FaultySpool(load_faults=2)
            await _accept(spool, 6)
            engine = await _run_engine(spool, mx, lambda e: e.metrics.delivered == 6)
            counts = await spool.counts()
            assert (counts.delivered, counts.inflight, counts.queued) == (6, 0, 0)
            assert engine.metrics.job_errors == 2

    asyncio.run(scenario())


def test_a_failing_expiry_pass_does_not_stop_the_engine() -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = FaultySpool(expire_faults=3)
            await _accept(spool, 4)
            # max_age 1s: the reconciler runs every 100 ms, so it fails three times early on
            engine = await _run_engine(
                spool,
                mx,
                lambda e: e.metrics.delivered == 4 and spool.expire_faults == 0,
                max_age="1s",
            )
            assert engine.metrics.job_errors == 3
            assert (await spool.counts()).delivered == 4

    asyncio.run(scenario())


def test_a_signing_failure_defers_and_frees_the_slot() -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as mx:
            spool = MemorySpool()
            await _accept(spool, 5)
            signer = FailingSigner(faults=5)
            engine = await _run_engine(
                spool,
                mx,
                lambda e: e.metrics.delivered == 5,
                signer=lambda d: signer,  # type: ignore[arg-type,return-value]
            )
            assert engine.metrics.job_errors == 5
            deferred = await _events(spool, DEFERRED)
            assert len(deferred) == 5 and await _events(spool, BOUNCE) == []
            assert len(await _events(spool, DELIVERED)) == 5
            assert all("OSError: HSM unreachable" in e["response"] for e in deferred)
            # nothing was sent when signing failed: the connection was used again
            assert len(mx.transactions) == 5

    asyncio.run(scenario())
