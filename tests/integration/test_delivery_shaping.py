"""End to end: sites shaped apart from each other — isolation, concurrency, suspension, expiry.

Each test drives a real ``postline serve`` node over HTTP, reads outcomes back from the
spool's events and checks what the fake destination MTAs recorded. No assertion is on a
rate: deadlines only bound how long a test waits for an outcome that must come.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.conftest import SpoolSnapshot, spool_snapshot
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer, _Session, running_in_thread


class FakeSmtpOnPort(FakeSmtpServer):
    """The fake MTA on a port chosen beforehand (``FakeSmtpServer`` always binds port 0)."""

    def __init__(self, port: int, **options: Any) -> None:
        super().__init__(**options)
        self.fixed_port = port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.fixed_port)
        self.port = self.fixed_port


def free_port() -> int:
    """A loopback port nothing listens on (bound and released, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settled(node: Any, done: Callable[[SpoolSnapshot], bool], timeout: float = 20) -> SpoolSnapshot:
    """``wait_for``, then a fresh snapshot: ``spool_snapshot`` reads the counts before the
    events, so the snapshot that satisfied ``done`` may count as pending what its events
    already show settled; a later read of the counts includes every settle it saw."""
    wait_for(node, done, timeout)
    return spool_snapshot(node.data_dir)


def send_batches(node: Any, key: str, rcpts: list[str], per_request: int = 50) -> None:
    for i in range(0, len(rcpts), per_request):
        send(node, key, *rcpts[i : i + per_request])


def rcpts_at(fake: FakeSmtpServer) -> list[str]:
    return [r for t in fake.transactions for r in t.rcpts]


def test_dead_site_deferred_then_delivered_after_a_probe(node_factory: Any) -> None:
    port = free_port()
    node = node_factory(fast_config(port)).start()
    key = node.create_key()
    rcpts = [f"user{i}@example.com" for i in range(20)]
    send(node, key, *rcpts)
    snap = settled(node, lambda s: len({e["email"] for e in s.of_type("deferred")}) == 20)
    deferred = snap.of_type("deferred")
    assert {e["email"] for e in deferred} == set(rcpts), node.log_tail()
    assert all(f"127.0.0.1:{port}" in e["response"] for e in deferred)
    for rcpt in rcpts:  # attempts are counted per delivery, one by one
        attempts = [e["attempt"] for e in deferred if e["email"] == rcpt]
        assert attempts == [str(i + 1) for i in range(len(attempts))]
    assert snap.of_type("delivered") == [] and snap.queued == 20

    # The site comes up: a probe finds it alive, the site resumes, the mail goes out.
    with running_in_thread(FakeSmtpOnPort(port)) as fake:
        snap = settled(node, lambda s: len(s.of_type("delivered")) == 20)
        assert len(snap.of_type("delivered")) == 20, node.log_tail()
        assert snap.of_type("bounce") == [] and snap.queued == 0
        assert sorted(rcpts_at(fake)) == sorted(rcpts)


def test_dead_site_shared_by_many_domains_resumes_them_all(node_factory: Any) -> None:
    # Five domains, one site (one route): their queues are leased concurrently, so some
    # leases complete after the first failed connection has suspended the site. Those
    # jobs must still go out with a probe, not wait in the window past their max age.
    port = free_port()
    node = node_factory(fast_config(port)).start()
    key = node.create_key()
    rcpts = [f"user{i}@d{i % 5}.test" for i in range(100)]
    send(node, key, *rcpts)
    snap = settled(node, lambda s: len(s.of_type("deferred")) >= 88, timeout=10)
    assert len(snap.of_type("deferred")) >= 88, node.log_tail()
    assert snap.of_type("delivered") == [] and snap.queued == 100

    with running_in_thread(FakeSmtpOnPort(port)) as fake:
        snap = settled(node, lambda s: len(s.of_type("delivered")) == 100, timeout=10)
        assert len(snap.of_type("delivered")) == 100, node.log_tail()
        assert snap.of_type("bounce") == [] and snap.queued == 0
        assert sorted(rcpts_at(fake)) == sorted(rcpts)


def test_slow_site_does_not_hold_up_a_healthy_one(node_factory: Any) -> None:
    with (
        running_in_thread(FakeSmtpServer(hostname="slow.test")) as slow,
        running_in_thread(FakeSmtpServer(hostname="fast.test")) as fast,
    ):
        cfg = fast_config(
            fast.port,
            routes={"slow.test": f"127.0.0.1:{slow.port}", "fast.test": f"127.0.0.1:{fast.port}"},
            domains={
                "slow.test": {
                    "connect_timeout": "2s",
                    "command_timeout": "1s",
                    "data_timeout": "1s",
                }
            },
        )
        node = node_factory(cfg).start()
        key = node.create_key()
        slow_rcpts = [f"stall-{i}@slow.test" for i in range(200)]  # no reply to RCPT, ever
        fast_rcpts = [f"user{i}@fast.test" for i in range(200)]
        for i in range(0, 200, 20):  # interleaved requests
            send(node, key, *slow_rcpts[i : i + 20])
            send(node, key, *fast_rcpts[i : i + 20])

        snap = settled(node, lambda s: len(s.of_type("delivered")) == 200, timeout=15)
        delivered = snap.of_type("delivered")
        assert len(delivered) == 200, node.log_tail()
        assert {e["email"] for e in delivered} == set(fast_rcpts)
        assert sorted(rcpts_at(fast)) == sorted(fast_rcpts)
        # The slow site's mail is all still pending (deferred or in flight), none lost.
        assert snap.queued == 200
        assert snap.of_type("bounce") == []
        assert slow.transactions == []
        assert slow.connections >= 1  # it was being worked on meanwhile


def test_throttling_site_gets_fewer_connections(node_factory: Any) -> None:
    with running_in_thread(FakeSmtpServer(max_connections=2)) as fake:
        cfg = fast_config(fake.port, shaping={
            "max_connections": 10,
            "connect_timeout": "2s",
            "command_timeout": "1s",
            "data_timeout": "2s",
        })  # fmt: skip
        node = node_factory(cfg).start()
        key = node.create_key()
        rcpts = [f"user{i}@example.com" for i in range(300)]
        send_batches(node, key, rcpts)
        snap = settled(node, lambda s: len(s.of_type("delivered")) == 300, timeout=30)
        assert len(snap.of_type("delivered")) == 300, node.log_tail()
        assert snap.of_type("bounce") == [] and snap.queued == 0
        got = Counter(rcpts_at(fake))
        assert set(got) == set(rcpts) and max(got.values()) == 1
        # The site said "421 too many connections" beyond 2. The node halves its window on
        # each 421 and probes upward again slowly (tens of refusals for 300 messages);
        # without that feedback it reconnects in a loop (~560 refusals when measured).
        assert fake.rejected_connections > 0
        assert fake.rejected_connections <= 100, fake.rejected_connections
        # A 421 greeting while other sessions run only ends that session (no deferral);
        # if the sole session is refused, the deferral says why.
        assert all(e["response"].startswith("421") for e in snap.of_type("deferred"))


def test_site_refusing_every_connection_is_deferred_then_expires(node_factory: Any) -> None:
    # Every connection is greeted with 421 (as a site does that has blocked our IP for a
    # while). The node must defer, back off and expire the mail, not reconnect in a loop.
    greeting = "421 4.7.0 fake.test Error: too many connections from 127.0.0.1"
    with running_in_thread(FakeSmtpServer(greeting=greeting)) as fake:
        node = node_factory(fast_config(fake.port, max_age="3s")).start()
        key = node.create_key()
        send(node, key, "bob@example.com")
        snap = settled(node, lambda s: bool(s.of_type("bounce")), timeout=10)
        (bounce,) = snap.of_type("bounce")
        assert bounce["status"] == "4.4.7", node.log_tail()
        deferred = snap.of_type("deferred")
        assert len(deferred) >= 1
        assert all(e["response"].startswith("421 4.7.0") for e in deferred)
        assert [e["attempt"] for e in deferred] == [str(i + 1) for i in range(len(deferred))]
        assert snap.queued == 0
        # One connection per attempt or probe (~5 here), where a hot loop made ~50,000.
        assert fake.connections <= 30, fake.connections


def test_stalled_site_expires_by_max_age(node_factory: Any) -> None:
    with running_in_thread(FakeSmtpServer(greeting_stall=True)) as fake:
        node = node_factory(fast_config(fake.port, max_age="2s")).start()
        key = node.create_key()
        rcpts = [f"user{i}@example.com" for i in range(5)]
        send(node, key, *rcpts)
        snap = settled(node, lambda s: len(s.of_type("bounce")) == 5, timeout=10)
        bounces = snap.of_type("bounce")
        assert {e["email"] for e in bounces} == set(rcpts), node.log_tail()
        assert all(e["status"] == "4.4.7" for e in bounces)
        assert all(e["bounce_classification"] == "Technical Failure" for e in bounces)
        (processed_at,) = {e["timestamp"] for e in snap.of_type("processed")}
        # Expired by max age (2 s) plus the reconciler's grain, timestamps in whole seconds.
        assert all(e["timestamp"] - processed_at <= 2 + 2 for e in bounces)
        assert snap.queued == 0 and snap.messages == 0 and snap.bodies == 0
        assert fake.connections >= 1 and fake.transactions == []
