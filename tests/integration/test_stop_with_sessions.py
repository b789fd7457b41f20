"""SIGTERM while deliveries hang (engine.STOP_SEND_GRACE). A session with no transaction in
flight (here: a destination that never sends its greeting) is cut at once; before, the
stop waited for the session's own timeout (60 s by default, 5 min here). A session in the
middle of a transaction gets the grace, then is cut and its job given back to the spool,
due at once. Either way nothing is lost: the mail is delivered after the restart."""

from __future__ import annotations

from typing import Any

from tests.conftest import spool_snapshot
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread

SLOW = {"connect_timeout": "5m", "command_timeout": "5m", "data_timeout": "5m"}


def _delivered(mx: FakeSmtpServer) -> list[str]:
    return [r for t in mx.transactions for r in t.rcpts]


def test_a_stalled_greeting_does_not_hold_the_stop(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    with running_in_thread(FakeSmtpServer(greeting_stall=True)) as stuck:
        node = node_factory(fast_config(stuck.port, shaping=SLOW)).start()
        send(node, node.create_key(), "held@example.com")
        wait_for(node, lambda s: stuck.connections >= 1)
        assert stuck.connections >= 1, node.log_tail()
        assert node.stop() == 0  # within NodeProcess.stop's 20 s; before: the 5 min timeout
    again = node_factory(fast_config(fake_mx.port)).start()  # the same data_dir
    wait_for(again, lambda s: "held@example.com" in _delivered(fake_mx))
    assert _delivered(fake_mx) == ["held@example.com"], again.log_tail()


def test_a_transaction_in_flight_gets_the_grace_then_goes_back_to_the_spool(
    node_factory: Any,
) -> None:
    with running_in_thread(FakeSmtpServer()) as mx:
        node = node_factory(fast_config(mx.port, shaping=SLOW)).start()
        send(node, node.create_key(), "stall-1@example.com")  # RCPT never answered
        wait_for(node, lambda s: mx.commands["RCPT"] >= 1)
        assert mx.commands["RCPT"] >= 1, node.log_tail()
        assert node.stop() == 0  # after STOP_SEND_GRACE (10 s); before: the 5 min timeout
    snap = spool_snapshot(node.data_dir)
    assert (snap.queued, snap.inflight) == (1, 0)  # queued again, not left leased
    assert "stopped deliveries still in flight" in node.log_tail()
