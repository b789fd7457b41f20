"""GET /metrics from a real node parses as Prometheus text, with what an operator asks."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import call, simple_mail

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.scrape import scrape


def families(port: int) -> dict[str, Any]:
    r = call(port, "GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.body.decode())}


def test_metrics_parse_with_help_type_and_outcomes_by_status(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(
        {
            "delivery": {
                "routes": {"*": f"127.0.0.1:{fake_mx.port}"},
                "retry_min": "1h",
                "retry_max": "1h",
            }
        }
    ).start()
    key = node.create_key()
    for to in ("bob@example.com", "450-carol@example.com"):
        assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(to), key).status == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = scrape(node.http_port)
        if seen.get("delivered") == 1 and seen.get("deferred") == 1:
            break
        time.sleep(0.1)
    time.sleep(5.5)  # the spool gauges are cached for 5 s
    fams = families(node.http_port)
    # prometheus_client names counter families without _total; samples keep it
    outcomes = {s.labels["status"]: s.value for s in fams["postline_outcomes"].samples}
    assert fams["postline_outcomes"].type == "counter"
    assert outcomes["delivered"] == 1 and outcomes["deferred"] == 1
    assert fams["postline_accepted_requests"].samples[0].value == 2
    assert fams["postline_queue_depth"].type == "gauge"
    assert fams["postline_queue_depth"].samples[0].value == 1  # the deferred one
    assert fams["postline_oldest_message_age_seconds"].samples[0].value >= 0
    assert fams["postline_process_resident_memory_bytes"].samples[0].value > 1_000_000
    assert all(f.documentation for f in fams.values())


def test_ready_agrees_with_healthz(node_factory: Any) -> None:
    node = node_factory(
        {"delivery": {"enabled": False}, "spool": {"min_free_bytes": 1 << 62}}
    ).start()
    health = call(node.http_port, "GET", "/healthz")
    ready = families(node.http_port)["postline_ready"].samples[0].value
    assert health.status == 503 and ready == 0
    other = node_factory({"delivery": {"enabled": False}}, name="ok").start()
    assert call(other.http_port, "GET", "/healthz").status == 200
    assert families(other.http_port)["postline_ready"].samples[0].value == 1
