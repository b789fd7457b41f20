"""The event pipeline seen from outside: consumer lags in `postline status` and /metrics."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.integration.test_delivery import fast_config, send, wait_for
from tests.integration.test_ops_cli import cli_json

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.scrape import scrape


def test_status_and_metrics_show_consumer_lag(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
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
    (probe,) = [c for c in status["consumers"] if c["name"] == "probe"]
    assert probe["lag"] == head == 4  # 2 processed + 2 delivered
    assert 0 < probe["lag_seconds"] <= time.time() - first_ts + 1
    assert scrape(node.http_port)["event_log_head"] == head
