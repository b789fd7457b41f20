"""End to end: where mail goes (MX over real DNS on loopback) and what a refusal means.

A real ``postline serve`` node resolves recipient domains through a FakeDnsServer (no
static routes) and contacts every MX host on ``delivery.mx_port``, where the fake
destination MTA listens on 127.0.0.1. Outcomes are read back from the spool's events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import SpoolSnapshot, spool_snapshot
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer


def mx_node(node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer) -> Any:
    """A node routing by DNS only: MX hosts are contacted on the fake MTA's port."""
    cfg = fast_config(fake_mx.port, routes={}, mx_port=fake_mx.port)
    cfg["dns"] = {"nameservers": [dns_server.address], "timeout": "1s"}
    return node_factory(cfg).start()


def settled(node: Any, done: Callable[[SpoolSnapshot], bool], timeout: float = 20) -> SpoolSnapshot:
    """``wait_for``, then a fresh snapshot: ``spool_snapshot`` reads the counts before the
    events, so the snapshot that satisfied ``done`` may count as pending what its events
    already show settled; a later read of the counts includes every settle it saw."""
    wait_for(node, done, timeout)
    return spool_snapshot(node.data_dir)


def rcpts_at(fake: FakeSmtpServer) -> list[str]:
    return sorted(r for t in fake.transactions for r in t.rcpts)


def events_for(snap: Any, kind: str, email: str) -> list[dict[str, Any]]:
    return [e for e in snap.of_type(kind) if e["email"] == email]


def test_delivered_via_mx(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    dns_server.add_mx("mx.test", [(10, "mx1.mx.test")])
    dns_server.add_a("mx1.mx.test", "127.0.0.1")
    node = mx_node(node_factory, dns_server, fake_mx)
    key = node.create_key()
    send(node, key, "bob@mx.test", "carol@mx.test")
    snap = settled(node, lambda s: len(s.of_type("delivered")) == 2)
    assert len(snap.of_type("delivered")) == 2, node.log_tail()
    assert all(e["response"].startswith("250") for e in snap.of_type("delivered"))
    assert snap.of_type("deferred") == [] and snap.queued == 0
    assert rcpts_at(fake_mx) == ["bob@mx.test", "carol@mx.test"]
    assert dns_server.query_count("mx.test", "MX") >= 1
    assert dns_server.query_count("mx1.mx.test", "A") >= 1


def test_null_mx_bounces_at_once(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    dns_server.add_mx("nomail.test", [(0, ".")])  # RFC 7505
    node = mx_node(node_factory, dns_server, fake_mx)
    key = node.create_key()
    send(node, key, "bob@nomail.test")
    snap = settled(node, lambda s: bool(s.of_type("bounce")))
    (bounce,) = snap.of_type("bounce")
    assert bounce["email"] == "bob@nomail.test", node.log_tail()
    assert bounce["status"] == "5.1.10"
    assert "null MX" in bounce["reason"]
    assert bounce["type"] == "bounce"
    assert snap.of_type("deferred") == []  # permanent: no retry
    assert snap.queued == 0
    assert fake_mx.connections == 0


def test_nxdomain_bounces(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    node = mx_node(node_factory, dns_server, fake_mx)  # the zone has no such domain
    key = node.create_key()
    send(node, key, "bob@missing.test")
    snap = settled(node, lambda s: bool(s.of_type("bounce")))
    (bounce,) = snap.of_type("bounce")
    assert bounce["email"] == "bob@missing.test", node.log_tail()
    assert bounce["status"] == "5.1.2"
    assert "does not exist" in bounce["reason"]
    assert snap.of_type("deferred") == [] and snap.queued == 0
    assert fake_mx.connections == 0


def test_servfail_defers_then_delivers_once_resolvable(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    dns_server.set_servfail("flaky.test")
    node = mx_node(node_factory, dns_server, fake_mx)
    key = node.create_key()
    send(node, key, "bob@flaky.test")
    snap = settled(node, lambda s: len(s.of_type("deferred")) >= 2)
    deferred = snap.of_type("deferred")
    assert [e["attempt"] for e in deferred][:2] == ["1", "2"], node.log_tail()
    assert all("SERVFAIL" in e["response"] for e in deferred)
    assert snap.of_type("bounce") == [] and snap.queued == 1
    assert fake_mx.connections == 0

    dns_server.add_mx("flaky.test", [(10, "mx1.flaky.test")])  # clears the SERVFAIL mode
    dns_server.add_a("mx1.flaky.test", "127.0.0.1")
    snap = settled(node, lambda s: bool(s.of_type("delivered")))
    (delivered,) = snap.of_type("delivered")
    assert delivered["email"] == "bob@flaky.test", node.log_tail()
    assert snap.of_type("bounce") == [] and snap.queued == 0
    assert rcpts_at(fake_mx) == ["bob@flaky.test"]


def test_mx_failover_to_next_preference(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    # mx1 is loopback too (all of 127/8 is), but nothing listens on 127.0.0.3: refused.
    dns_server.add_mx("fo.test", [(20, "mx2.fo.test"), (10, "mx1.fo.test")])
    dns_server.add_a("mx1.fo.test", "127.0.0.3")
    dns_server.add_a("mx2.fo.test", "127.0.0.1")
    node = mx_node(node_factory, dns_server, fake_mx)
    key = node.create_key()
    send(node, key, "bob@fo.test")
    snap = settled(node, lambda s: bool(s.of_type("delivered")))
    (delivered,) = snap.of_type("delivered")
    assert delivered["email"] == "bob@fo.test", node.log_tail()
    assert snap.of_type("deferred") == []  # the failover happened within one attempt
    assert snap.queued == 0
    assert rcpts_at(fake_mx) == ["bob@fo.test"]
    assert dns_server.query_count("mx1.fo.test", "A") >= 1  # mx1 was tried first


def test_block_is_recorded_but_not_suppressed(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    # "554 5.7.1 <...>: Relay access denied" refuses the sender, not the address.
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "554-guarded@example.com")
    snap = settled(node, lambda s: bool(s.of_type("bounce")))
    (bounce,) = snap.of_type("bounce")
    assert bounce["type"] == "blocked", node.log_tail()
    assert bounce["status"] == "5.7.1"
    assert bounce["reason"].startswith("554 5.7.1")
    assert snap.queued == 0

    # SendGrid keeps blocks on a list but does not suppress them: the next send is tried.
    send(node, key, "554-guarded@example.com")
    snap = settled(node, lambda s: len(s.of_type("bounce")) == 2)
    assert snap.of_type("dropped") == []
    assert len(snap.of_type("processed")) == 2
    assert [e["type"] for e in snap.of_type("bounce")] == ["blocked", "blocked"]
    assert fake_mx.commands["RCPT"] == 2 and fake_mx.transactions == []
    assert snap.queued == 0
