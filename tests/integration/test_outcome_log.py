"""The outcome log of a real node: one JSON line per outcome, with every field."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.integration.test_delivery import send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess

FIELDS = {"sg_message_id", "recipient", "relay", "delay", "attempt", "status", "dsn", "reply"}


def config(port: int, outcomes: str = "info", **delivery: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "routes": {"*": f"127.0.0.1:{port}"},
        "retry_min": "1h",
        "retry_max": "2h",
        "max_age": "3h",
        "shaping": {"connect_timeout": "2s", "command_timeout": "2s", "data_timeout": "2s"},
    }
    d.update(delivery)
    return {"delivery": d, "log": {"level": "info", "outcomes": outcomes}}


def outcome_lines(node: NodeProcess) -> list[dict[str, Any]]:
    text = node.log_tail(10_000_000)
    found = [json.loads(x) for x in text.splitlines() if '"logger":"postline.outcome"' in x]
    return found


def lines_when(node: NodeProcess, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := outcome_lines(node)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_a_line_for_sent_deferred_bounced_and_dropped(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(config(fake_mx.port)).start()
    key = node.create_key()
    x_id = send(node, key, "bob@ok.test", "450-later@ok.test", "550-gone@ok.test")
    wait_for(node, lambda s: len(s.of_type("processed")) == 3 and s.queued == 1)
    again = send(node, key, "550-gone@ok.test")  # on the bounce list now: dropped at accept
    found = lines_when(node, 4)
    by = {x["status"]: x for x in found}
    assert sorted(by) == ["bounced", "deferred", "dropped", "sent"], found
    assert len(found) == 4  # one line per outcome, none per SMTP command
    relay = f"127.0.0.1:{fake_mx.port}"
    sent, deferred, bounced, dropped = by["sent"], by["deferred"], by["bounced"], by["dropped"]
    assert all(set(x) >= FIELDS and x["level"] == "info" for x in found)
    assert sent["sg_message_id"] == f"{x_id}.pl1.0" and sent["recipient"] == "bob@ok.test"
    assert sent["relay"] == relay and sent["reply"].startswith("250 ") and sent["dsn"] == "2.0.0"
    assert 0 <= sent["delay"] < 30 and sent["attempt"] == 1
    assert deferred["recipient"] == "450-later@ok.test" and deferred["relay"] == relay
    assert deferred["reply"].startswith("450 4.2.0") and deferred["dsn"] == "4.2.0"
    assert bounced["sg_message_id"] == f"{x_id}.pl1.2" and bounced["relay"] == relay
    assert bounced["reply"].startswith("550 5.1.1") and bounced["dsn"] == "5.1.1"
    assert dropped["sg_message_id"] == f"{again}.pl1.0" and dropped["relay"] == "none"
    assert dropped["reply"] == "Bounced Address" and dropped["recipient"] == "550-gone@ok.test"


def test_a_line_for_expired(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = config(fake_mx.port, retry_min="200ms", retry_max="300ms", max_age="1s")
    node = node_factory(cfg).start()
    send(node, node.create_key(), "450-never@ok.test")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = outcome_lines(node)
        if any(x["status"] == "expired" for x in found):
            break
        time.sleep(0.1)
    (expired,) = [x for x in found if x["status"] == "expired"]
    assert expired["dsn"] == "4.4.7" and expired["recipient"] == "450-never@ok.test"
    assert expired["reply"]  # the last error (450 ...) or why it expired while queued
    assert all(x["status"] == "deferred" for x in found if x is not expired)


def test_outcomes_off_writes_no_line(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(config(fake_mx.port, outcomes="off")).start()
    send(node, node.create_key(), "bob@ok.test")
    wait_for(node, lambda s: bool(s.of_type("delivered")))
    node.stop()
    assert outcome_lines(node) == [] and '"node started"' in node.log_tail()
