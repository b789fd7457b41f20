"""End to end: HTTP in, the fake destination MTA out, events back in the log.

The destination is steered by the recipient's local part (testing/fake_smtp.py):
``450-x@`` → 450 at RCPT, ``550-x@`` → 550 5.1.1, ``stall-x@`` → no reply, ...
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.conftest import SpoolSnapshot, call, simple_mail, spool_snapshot

from postline.testing.fake_smtp import FakeSmtpServer


def fast_config(port: int, **delivery: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "routes": {"*": f"127.0.0.1:{port}"},
        "retry_min": "300ms",
        "retry_max": "1s",
        "max_age": "30s",
        "shaping": {"connect_timeout": "2s", "command_timeout": "1s", "data_timeout": "2s"},
    }
    cfg.update(delivery)
    return {"delivery": cfg}


def wait_for(
    node: Any, done: Callable[[SpoolSnapshot], bool], timeout: float = 20
) -> SpoolSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = spool_snapshot(node.data_dir)
        if done(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.1)


def send(node: Any, key: str, *rcpts: str, **extra: Any) -> str:
    mail = simple_mail(**extra)
    mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202, r.body
    return r.headers["x-message-id"]


def test_delivered_with_events(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "bob@example.com", "carol@example.org", categories=["c1"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 2 and s.queued == 0)
    delivered = snap.of_type("delivered")
    assert len(delivered) == 2, node.log_tail()
    assert all(e["response"].startswith("250") and e["tls"] == 0 for e in delivered)
    assert all(e["category"] == ["c1"] for e in delivered)
    assert snap.queued == 0
    got = sorted(r for t in fake_mx.transactions for r in t.rcpts)
    assert got == ["bob@example.com", "carol@example.org"]
    data = fake_mx.transactions[0].data
    assert b"Subject: Hello" in data and b"Hi Bob" in data and b"Message-ID: <" in data


def test_hard_bounce_classified_and_suppressed(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "550-gone@example.com")
    snap = wait_for(node, lambda s: bool(s.of_type("bounce")))
    (bounce,) = snap.of_type("bounce")
    assert bounce["type"] == "bounce"
    assert bounce["status"].startswith("5.1.")
    assert bounce["bounce_classification"] == "Invalid Address"
    # The address is now suppressed: the next send is dropped at accept.
    send(node, key, "550-gone@example.com")
    snap = spool_snapshot(node.data_dir)
    (dropped,) = snap.of_type("dropped")
    assert dropped["reason"] == "Bounced Address" and dropped["email"] == "550-gone@example.com"


def test_deferred_then_expired_as_bounce(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = fast_config(fake_mx.port, max_age="2s")
    node = node_factory(cfg).start()
    key = node.create_key()
    send(node, key, "450-busy@example.com")
    snap = wait_for(node, lambda s: bool(s.of_type("bounce")), timeout=15)
    deferred = snap.of_type("deferred")
    assert len(deferred) >= 2
    assert [e["attempt"] for e in deferred][:2] == ["1", "2"]
    (bounce,) = snap.of_type("bounce")
    assert bounce["status"] == "4.4.7"
    assert snap.queued == 0


def test_tenants_share_a_destination_fairly(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = fast_config(fake_mx.port, window=100)
    cfg["delivery"]["shaping"].update(max_message_rate=300.0, max_connections=2)
    node = node_factory(cfg).start()
    big, small = node.create_key(tenant="big"), node.create_key(tenant="small")
    for batch in range(20):  # 2,000 messages queued first by one tenant
        send(node, big, *(f"b{batch}x{i}@example.com" for i in range(100)))
    send(node, small, *(f"s{i}@example.com" for i in range(20)))
    snap = wait_for(
        node,
        lambda s: sum(e["email"].startswith("s") for e in s.of_type("delivered")) == 20,
        timeout=30,
    )
    small_done = sum(e["email"].startswith("s") for e in snap.of_type("delivered"))
    big_done = sum(e["email"].startswith("b") for e in snap.of_type("delivered"))
    assert small_done == 20
    # Without fairness the small tenant would wait behind the whole backlog.
    assert big_done < 1500, big_done


def test_sigterm_returns_in_flight_work_to_the_spool(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    cfg = fast_config(fake_mx.port, retry_min="1h", retry_max="1h", max_age="3h")
    node = node_factory(cfg).start()
    key = node.create_key()
    send(node, key, *(f"stall-{i}@example.com" for i in range(30)))
    wait_for(node, lambda s: fake_mx.commands.get("RCPT", 0) > 0, timeout=10)
    assert node.stop() == 0  # SIGTERM while sessions wait on stalled replies
    snap = spool_snapshot(node.data_dir)
    assert snap.inflight == 0  # nothing left leased: finished or handed back
    assert snap.queued == 30  # and nothing lost
    assert not snap.of_type("delivered") and not snap.of_type("bounce")
