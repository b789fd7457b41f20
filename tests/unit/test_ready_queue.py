from __future__ import annotations

from postline.schedule.ready import Job, MessageMeta, ReadyQueue
from postline.spool.interface import Lease


def _job(tenant: str, n: int = 1, mid: int = 1) -> Job:
    leases = [Lease(i, mid, tenant, f"r{i}@a.com", "a.com", 0, 0.0, 99.0, "x") for i in range(n)]
    return Job(tenant, "a.com", mid, leases, b"", b"", MessageMeta("x", "<x>", None, None))


def test_window_accounting() -> None:
    q = ReadyQueue(window=10)
    q.push(_job("t", 3))
    q.push(_job("t", 2))
    assert q.room() == 5
    job = q.take()
    assert job is not None and job.size == 3
    assert (q.ready, q.inflight, q.room()) == (2, 3, 5)
    q.settled(3)
    assert q.room() == 8


def test_tenants_take_turns() -> None:
    q = ReadyQueue(window=1000)
    for i in range(100):
        q.push(_job("big", mid=i))
    for i in range(3):
        q.push(_job("small", mid=1000 + i))
    order = [q.take().tenant for _ in range(6)]  # type: ignore[union-attr]
    assert order.count("small") == 3


def test_drain_returns_waiting_jobs_only() -> None:
    q = ReadyQueue(window=10)
    q.push(_job("t", 1, 1))
    q.push(_job("t", 1, 2))
    q.take()
    drained = q.drain()
    assert [j.message_id for j in drained] == [2]
    assert q.ready == 0 and q.inflight == 1
