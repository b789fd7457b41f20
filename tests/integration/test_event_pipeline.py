"""The event pipeline seen from outside: consumer lags in `postline status` and /metrics."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.conftest import call
from tests.integration.test_delivery import fast_config, send, wait_for
from tests.integration.test_ops_cli import cli_json

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.scrape import scrape


def test_status_and_metrics_show_consumer_lag(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "bob@example.com", "carol@example.org")
    wait_for(node, lambda s: len(s.of_type("delivered")) == 2)
    with sqlite3.connect(node.data_dir / "spool.db") as conn:
        head = conn.execute("SELECT max(offset) FROM events").fetchone()[0]
        first_ts = conn.execute("SELECT min(ts) FROM events").fetchone()[0]
        # a consumer that has read nothing yet, as a stalled one would look
        conn.execute("INSERT INTO consumers (name, offset) VALUES ('probe', 0)")
    status = cli_json(node, "status")
    assert status["node"]["pipeline"]["where"] == "worker"
    (probe,) = [c for c in status["consumers"] if c["name"] == "probe"]
    assert probe["lag"] == head == 4  # 2 processed + 2 delivered
    assert 0 < probe["lag_seconds"] <= time.time() - first_ts + 1
    deadline = time.monotonic() + 30  # the worker's metrics appear once it answers
    while "event_log_head" not in (fams := scrape(node.http_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fams["event_log_head"] == head


def _worker_pid(node_pid: int) -> int:
    children = Path(f"/proc/{node_pid}/task/{node_pid}/children").read_text().split()
    for pid in children:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"postline.events.worker" in cmd:
            return int(pid)
    raise AssertionError(f"no worker among the node's children {children}")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[-1][:3]:
                return True  # a zombie: exited, not yet reaped
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_dead_worker_never_stops_the_mail_and_comes_back(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    assert node.proc is not None
    worker = _worker_pid(node.proc.pid)
    os.kill(worker, signal.SIGKILL)
    assert _gone(worker)
    # mail goes on while the pipeline is down; its API says so
    send(node, key, "bob@example.com")
    reply = call(
        node.http_port, "GET", "/v3/messages?query=" + quote('to_email="bob@example.com"'), key=key
    )
    assert reply.status in (503, 200), reply.body
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    # the supervisor starts it again; it catches up from its offsets
    deadline = time.monotonic() + 30
    found: list[Any] = []
    while time.monotonic() < deadline and not found:
        r = call(
            node.http_port,
            "GET",
            "/v3/messages?query=" + quote('to_email="bob@example.com"'),
            key=key,
        )
        if r.status == 200:
            found = [m for m in r.json()["messages"] if m["status"] == "delivered"]
        time.sleep(0.2)
    assert found, node.log_tail()
    assert scrape(node.http_port)["pipeline_worker_restarts"] == 1
    assert _worker_pid(node.proc.pid) != worker


def test_the_worker_dies_with_a_killed_node(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    assert node.proc is not None
    worker = _worker_pid(node.proc.pid)
    node.kill()
    assert _gone(worker), "the worker outlived its node"
