"""The HTTP door against hostile requests, over raw sockets: header limits, auth before the
body, ``Expect: 100-continue``, nothing executed after a refusal, Host, truncated gzip."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from bench.attacks import (
    BAD_KEY,
    MB,
    big_upload,
    connect,
    flood_unread,
    header_flood,
    is_closed,
    push,
    read_response,
    rss_mib,
    upload_head,
)
from tests.conftest import call, simple_mail


def scrape(port: int) -> dict[str, float]:
    """GET /metrics as {name without prefix and _total: value}."""
    r = call(port, "GET", "/metrics")
    assert r.status == 200
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("postline_").removesuffix("_total")] = float(value)
    return out


def refused(port: int, raw: bytes, status: int) -> dict[str, Any]:
    """Send ``raw``; assert one ``status`` answer in SendGrid's shape, then a closed connection."""
    with connect(port) as sock:
        push(sock, raw)
        resp = read_response(sock)
        assert resp is not None and resp.status == status, resp
        assert resp.headers.get("connection") == "close"
        assert is_closed(sock)
    err: dict[str, Any] = json.loads(resp.body)["errors"][0]
    return err


def assert_only_marker_ran(port: int, key: str, accepted_before: float) -> None:
    """Send one more mail and count: a request that ran after a refusal would show as a
    second one (it was dispatched before the marker, so it is spooled by then)."""
    assert call(port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    assert scrape(port)["accepted_requests"] == accepted_before + 1


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from postline.testing.node import NodeProcess

    n = NodeProcess(tmp_path_factory.mktemp("limits"), {"delivery": {"enabled": False}})
    n.start()
    n.key = n.create_key()  # type: ignore[attr-defined]
    yield n
    n.stop()


def test_request_line_too_long_is_414(node: Any) -> None:
    raw = b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert "URL" in refused(node.http_port, raw, 414)["message"]


def test_header_line_too_long_is_431(node: Any) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n"
    assert "8192" in refused(node.http_port, raw, 431)["message"]


def test_too_many_headers_is_431(node: Any) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 100 + b"\r\n"
    assert "100 header" in refused(node.http_port, raw, 431)["message"]


def test_too_many_header_bytes_is_431(node: Any) -> None:
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(20))
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"
    refused(node.http_port, raw, 431)


def test_repeated_header_flood_is_cut_short(node: Any) -> None:
    """200,000 repeated lines blocked the event loop for 66 s; now the 101st line ends it."""
    resp = header_flood(node.http_port, 200_000)
    assert resp is not None and resp.status == 431
    assert call(node.http_port, "GET", "/healthz").status == 200


def test_huge_token_is_refused_without_growing_memory(node: Any) -> None:
    pid = node.proc.pid
    before = rss_mib(pid)
    for i in range(5):
        token = bytes([ord("A") + i]) * (20 * MB)
        raw = b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
        with connect(node.http_port) as sock:
            sent = push(sock, raw + b"\r\nContent-Length: 2\r\n\r\n{}")
            resp = read_response(sock)
        assert resp is not None and resp.status == 431
        assert sent < 10 * MB  # answered long before the token was sent
    assert rss_mib(pid) - before < 40  # five 20 MB tokens held would be 100 MB


@pytest.mark.parametrize("key", [None, BAD_KEY])
def test_unauthenticated_upload_is_refused_before_its_body(node: Any, key: str | None) -> None:
    pid = node.proc.pid
    before = rss_mib(pid)
    for _ in range(5):
        status, sent = big_upload(node.http_port, key, 44 * MB)
        assert status == 401
        assert sent < 22 * MB  # most of the body was never read
    assert rss_mib(pid) - before < 40  # five bodies held would be 220 MB


def test_auth_is_answered_before_404_405_403_after_the_body(node: Any) -> None:
    # With a good key the path and method are judged once the body is in, as before.
    scoped = node.create_key(scopes="stats.read")
    assert call(node.http_port, "POST", "/v3/nope", b"{}", key=node.key).status == 404
    assert call(node.http_port, "GET", "/v3/mail/send", key=node.key).status == 405
    assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=scoped).status == 403
    assert call(node.http_port, "POST", "/v3/nope", b"{}", key=BAD_KEY).status == 401


def test_expect_100_continue(node: Any) -> None:
    body = json.dumps(simple_mail()).encode()
    with connect(node.http_port) as sock:
        sock.sendall(upload_head(len(body), node.key, extra="Expect: 100-continue\r\n"))
        first = read_response(sock)
        assert first is not None and first.status == 100
        sock.sendall(body)
        final = read_response(sock)
    assert final is not None and final.status == 202


@pytest.mark.parametrize(
    ("size", "key", "status"), [(100, BAD_KEY, 401), (100, None, 401), (200 * MB, "ok", 413)]
)
def test_expect_100_continue_refused(node: Any, size: int, key: str | None, status: int) -> None:
    key = node.key if key == "ok" else key
    with connect(node.http_port) as sock:
        sock.sendall(upload_head(size, key, extra="Expect: 100-continue\r\n"))
        resp = read_response(sock)
        assert resp is not None and resp.status == status  # the final answer, no 100
        assert is_closed(sock)


def test_no_request_runs_after_a_refused_one(node: Any) -> None:
    """A bad-key request and a good one pipelined: one 401, and the second never runs."""
    body = json.dumps(simple_mail()).encode()
    good = upload_head(len(body), node.key) + body
    bad = upload_head(len(body), BAD_KEY) + body
    accepted = scrape(node.http_port)["accepted_requests"]
    with connect(node.http_port) as sock:
        sock.sendall(bad + good)
        resp = read_response(sock)
        assert resp is not None and resp.status == 401
        assert read_response(sock) is None
    assert_only_marker_ran(node.http_port, node.key, accepted)


def test_no_request_runs_after_an_oversized_chunked_body(node_factory: Any) -> None:
    n = node_factory({"delivery": {"enabled": False}, "http": {"max_body": 1000}}).start()
    key = n.create_key()
    body = json.dumps(simple_mail()).encode()
    chunk = b"x" * 2000
    big = (
        b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    )
    with connect(n.http_port) as sock:
        sock.sendall(big + upload_head(len(body), key) + body)
        resp = read_response(sock)
        assert resp is not None and resp.status == 413
        assert read_response(sock) is None
    assert_only_marker_ran(n.http_port, key, 0)


def test_http11_without_host_is_400(node: Any) -> None:
    err = refused(node.http_port, b"GET /healthz HTTP/1.1\r\n\r\n", 400)
    assert "Host" in err["message"]
    raw = b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert "Host" in refused(node.http_port, raw, 400)["message"]


def test_http10_without_host_is_fine(node: Any) -> None:
    with connect(node.http_port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        resp = read_response(sock)
    assert resp is not None and resp.status == 200


def test_truncated_gzip_is_400(node: Any) -> None:
    raw = gzip.compress(json.dumps(simple_mail()).encode())
    r = call(
        node.http_port,
        "POST",
        "/v3/mail/send",
        raw[: len(raw) // 2],
        key=node.key,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status == 400
    assert r.json()["errors"][0]["message"] == "request body is not valid gzip"


def test_idle_connections_hold_no_request_body(node: Any) -> None:
    """Nine keep-alive connections after a 20 MB request each: their bodies are freed."""
    pid = node.proc.pid
    body = b'{"subject": "' + b"a" * (20 * MB) + b'"}'
    socks = [connect(node.http_port) for _ in range(9)]
    socks[0].sendall(upload_head(len(body), node.key) + body)  # warm the allocator
    assert read_response(socks[0], 30) is not None
    before = rss_mib(pid)
    try:
        for sock in socks[1:]:
            sock.sendall(upload_head(len(body), node.key) + body)
            resp = read_response(sock, 30)
            assert resp is not None and resp.status == 400
        # eight bodies held would be 160 MB. Measured with four: +21-25 MB alone, +40.2 MB
        # once in a full parallel run (the allocator keeps what it freed), which failed
        # the bound of 40 this had then; hence eight and 60.
        assert rss_mib(pid) - before < 60
    finally:
        for sock in socks:
            sock.close()


def test_a_client_that_never_reads_its_responses_is_not_read_either(node: Any) -> None:
    """Pipelined requests whose responses are never read: the door stops reading once its
    unsent responses pass the transport's high-water mark (``pause_writing``), so the flood
    waits in the kernel's buffers and the node's memory does not follow it."""
    pid = node.proc.pid
    before = rss_mib(pid)
    offered = 64 * MB
    sent = flood_unread(
        node.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000, offered
    )
    grew = rss_mib(pid) - before
    print(f"never-reading client: {sent / MB:.1f} MB sent of {offered / MB:.0f} MB offered, "
          f"node RSS +{grew:.1f} MiB")  # fmt: skip
    # measured: 7.2-7.5 MB sent (the kernel's buffers), node +4.8 MiB; with pause_writing
    # made a no-op the door read on and the connection was reset part-way
    assert sent < offered, "the door read a 64 MB flood whose responses nobody read"
    assert grew < 16, f"node grew {grew:.1f} MiB"
