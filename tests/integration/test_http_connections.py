"""The HTTP door's connections over raw sockets: timeouts, connection caps, failed
authentications (counted, logged, slowed) and the protection of ``/metrics``."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

from bench.attacks import BAD_KEY, connect, is_closed, read_response, upload_head
from tests.conftest import call, simple_mail
from tests.integration.test_http_limits import scrape

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def served(sock: socket.socket) -> int:
    sock.sendall(HEALTHZ)
    resp = read_response(sock)
    return resp.status if resp else 0


def test_idle_connections_are_closed(node_factory: Any) -> None:
    http = {"idle_timeout": "300ms", "header_timeout": "500ms"}
    n = node_factory({"delivery": {"enabled": False}, "http": http}).start()
    with connect(n.http_port) as sock:
        assert served(sock) == 200
        assert is_closed(sock)  # idle after a request: idle_timeout
    with connect(n.http_port) as sock:
        assert is_closed(sock)  # nothing ever sent: header_timeout
    assert scrape(n.http_port)["http_timeouts"] >= 2


def test_slow_headers_get_408(node_factory: Any) -> None:
    n = node_factory({"delivery": {"enabled": False}, "http": {"header_timeout": "500ms"}}).start()
    with connect(n.http_port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(200):  # slowloris: a header line now and then, never the end
            if select.select([sock], [], [], 0.05)[0]:
                break
            sock.sendall(b"X-A: b\r\n")
        resp = read_response(sock)
        assert resp is not None and resp.status == 408
        assert is_closed(sock)


def test_slow_body_gets_408(node_factory: Any) -> None:
    n = node_factory({"delivery": {"enabled": False}, "http": {"body_timeout": "500ms"}}).start()
    key = n.create_key()
    with connect(n.http_port) as sock:
        sock.sendall(upload_head(1000, key) + b'{"personalizations"')
        resp = read_response(sock)
        assert resp is not None and resp.status == 408
        assert "body" in json.loads(resp.body)["errors"][0]["message"]
        assert is_closed(sock)


def _refused_503(port: int, source: str) -> bool:
    with connect(port, source) as sock:
        resp = read_response(sock)
        return resp is not None and resp.status == 503 and is_closed(sock)


def test_connection_caps(node_factory: Any) -> None:
    http = {"max_connections": 3, "max_connections_per_ip": 2}
    n = node_factory({"delivery": {"enabled": False}, "http": http}).start()
    first = [connect(n.http_port, "127.0.0.1") for _ in range(2)]
    assert [served(s) for s in first] == [200, 200]
    assert _refused_503(n.http_port, "127.0.0.1")  # over the per-address cap
    other = connect(n.http_port, "127.0.0.2")
    assert served(other) == 200  # another address still gets in
    assert _refused_503(n.http_port, "127.0.0.3")  # over the total cap
    first.pop().close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server sees the close a moment later
        with connect(n.http_port, "127.0.0.1") as sock:
            if served(sock) == 200:
                break
    else:
        raise AssertionError("a freed slot was not reused")
    for s in [*first, other]:
        s.close()
    time.sleep(0.2)
    assert scrape(n.http_port)["http_connections_refused"] >= 2


def test_failed_auth_is_counted_logged_and_slowed(node_factory: Any) -> None:
    http = {"auth_fail_limit": 3, "auth_fail_delay": "60s"}
    n = node_factory({"delivery": {"enabled": False}, "http": http}).start()
    key = n.create_key()
    for _ in range(3):
        assert call(n.http_port, "POST", "/v3/mail/send", simple_mail(), key=BAD_KEY).status == 401
    metrics = scrape(n.http_port)
    assert metrics["auth_failures"] == 3 and metrics["auth_delayed"] == 0
    lines = [json.loads(x) for x in n.log_tail(100_000).splitlines() if "authentication" in x]
    assert len(lines) == 1 and lines[0]["remote"] == "127.0.0.1"  # once per address per minute
    assert BAD_KEY not in n.log_tail(100_000)
    with connect(n.http_port) as slowed:
        slowed.sendall(upload_head(2, BAD_KEY) + b"{}")
        deadline = time.monotonic() + 10
        while scrape(n.http_port)["auth_failures"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scrape(n.http_port)["auth_delayed"] == 1
        # A good key from the same address is served at once while the 401 is held.
        assert call(n.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
        assert not select.select([slowed], [], [], 0)[0]


def test_metrics_key(node_factory: Any) -> None:
    n = node_factory({"delivery": {"enabled": False}, "http": {"metrics_key": "m-s3cret"}}).start()
    assert call(n.http_port, "GET", "/metrics").status == 401
    assert call(n.http_port, "GET", "/metrics", key="wrong").status == 401
    r = call(n.http_port, "GET", "/metrics", key="m-s3cret")
    assert r.status == 200 and b"postline_accepted_requests" in r.body
    assert call(n.http_port, "GET", "/healthz").status == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_listen(node_factory: Any) -> None:
    port = _free_port()
    http = {"metrics_listen": f"127.0.0.1:{port}"}
    n = node_factory({"delivery": {"enabled": False}, "http": http}).start()
    assert call(n.http_port, "GET", "/metrics").status == 404
    r = call(port, "GET", "/metrics")
    assert r.status == 200 and b"postline_accepted_requests" in r.body
    assert call(port, "POST", "/v3/mail/send", simple_mail()).status == 404
