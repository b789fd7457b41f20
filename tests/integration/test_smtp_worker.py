"""The SMTP relay's worker process (smtp/worker.py, smtp/supervisor.py) seen from outside:
started by the first connection, restarted when it dies (counters carried over, nothing
acknowledged lost), gone with its node; and the relay in the node's own process
(``[smtp] worker = false``) still works."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from pathlib import Path
from typing import Any

from tests.integration.test_delivery import wait_for
from tests.integration.test_smtp_relay import message, relay_config

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.scrape import scrape

TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}


def _children(pid: int, module: str) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for kid in kids:
        with contextlib.suppress(OSError):
            if module.encode() in Path(f"/proc/{kid}/cmdline").read_bytes():
                found.append(int(kid))
    return found


def _wait(cond: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _send(node: Any, to: str) -> None:
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30) as smtp:
        assert smtp.send_message(message(to), "ana@sender.example", [to]) == {}


def test_worker_starts_at_first_connection_and_comes_back_after_sigkill(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    assert node.proc is not None
    time.sleep(0.3)
    assert _children(node.proc.pid, "postline.smtp.worker") == []  # nobody relayed yet
    _send(node, "a@example.com")
    (first,) = _children(node.proc.pid, "postline.smtp.worker")
    assert scrape(node.http_port)["smtp_messages"] == 1  # read from the worker, kept
    os.kill(first, signal.SIGKILL)
    _wait(lambda: not _alive(first))
    # The listening socket is the node's: this connection waits in its backlog until the
    # new worker (after the 1 s restart delay) greets it.
    _send(node, "b@example.com")
    (second,) = _children(node.proc.pid, "postline.smtp.worker")
    assert second != first
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 2)
    assert sorted(e["email"] for e in snap.of_type("delivered")) == [
        "a@example.com",
        "b@example.com",
    ]
    m = scrape(node.http_port)
    assert m["smtp_worker_up"] == 1 and m["smtp_worker_restarts"] == 1, m
    assert m["smtp_messages"] == 2, m  # the dead worker's count is carried over
    assert m["smtp_connections_accepted"] == 2, m


def test_node_kill_9_takes_its_relay_worker_along(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    assert node.proc is not None
    _send(node, "a@example.com")
    (worker,) = _children(node.proc.pid, "postline.smtp.worker")
    node.kill()
    _wait(lambda: not _alive(worker))


def test_relay_in_the_node_process(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, worker=False)).start()
    assert node.proc is not None
    key = node.create_key()
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        smtp.login("apikey", key)
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert _children(node.proc.pid, "postline.smtp.worker") == []
    m = scrape(node.http_port)
    assert m["smtp_messages"] == 1 and m["smtp_connections_accepted"] == 1, m
    assert "smtp_worker_up" not in m
