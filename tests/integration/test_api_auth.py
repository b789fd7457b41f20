"""Auth, routing and error shapes over real HTTP."""

from __future__ import annotations

import socket
from typing import Any

from tests.conftest import call, simple_mail


def _only_error(reply: Any) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"errors"}
    assert len(body["errors"]) == 1
    err: dict[str, Any] = body["errors"][0]
    return err


def test_healthz(accept_node: Any) -> None:
    r = call(accept_node.http_port, "GET", "/healthz")
    assert r.status == 200
    assert r.json()["status"] == "ok"


def test_no_key_is_401(accept_node: Any) -> None:
    r = call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail())
    assert r.status == 401
    assert _only_error(r)["message"] == "authorization required"


def test_wrong_key_is_401(accept_node: Any) -> None:
    r = call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail(), key="SG.nope.nope")
    assert r.status == 401
    assert "invalid, expired, or revoked" in _only_error(r)["message"]


def test_not_bearer_is_401(accept_node: Any) -> None:
    key = accept_node.create_key()
    r = call(
        accept_node.http_port,
        "POST",
        "/v3/mail/send",
        simple_mail(),
        headers={"Authorization": f"Basic {key}"},
    )
    assert r.status == 401


def test_missing_scope_is_403(accept_node: Any) -> None:
    key = accept_node.create_key(scopes="stats.read")
    r = call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key)
    assert r.status == 403
    assert _only_error(r) == {"message": "access forbidden", "field": None, "help": None}


def test_scoped_key_can_send(accept_node: Any) -> None:
    key = accept_node.create_key(scopes="mail.send")
    r = call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key)
    assert r.status == 202


def test_revoked_key_stops_working(accept_node: Any) -> None:
    key = accept_node.create_key()
    assert (
        call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    )
    import subprocess

    from postline.testing.node import postline_cmd

    key_id = key.split(".")[1]
    subprocess.run(
        postline_cmd("keys", "revoke", key_id, "--config", str(accept_node.config_path)),
        check=True,
        capture_output=True,
    )
    # The node caches a positive lookup for at most 5 s.
    import time

    deadline = time.monotonic() + 10
    status = 202
    while time.monotonic() < deadline and status != 401:
        status = call(accept_node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status
        time.sleep(0.2)
    assert status == 401


def test_unknown_path_and_method(accept_node: Any) -> None:
    key = accept_node.create_key()
    r = call(accept_node.http_port, "GET", "/v3/nope", key=key)
    assert r.status == 404 and _only_error(r)["message"] == "not found"
    r = call(accept_node.http_port, "GET", "/v3/mail/send", key=key)
    assert r.status == 405 and _only_error(r)["message"] == "method not allowed"
    r = call(accept_node.http_port, "GET", "/v3/mail/send")
    assert r.status == 401


def test_malformed_http_gets_400_and_close(accept_node: Any) -> None:
    with socket.create_connection(("127.0.0.1", accept_node.http_port), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert b'"errors"' in data


def test_keep_alive_serves_many_requests(accept_node: Any) -> None:
    import http.client
    import json

    key = accept_node.create_key()
    conn = http.client.HTTPConnection("127.0.0.1", accept_node.http_port, timeout=10)
    body = json.dumps(simple_mail()).encode()
    ids = set()
    for _ in range(20):
        conn.request("POST", "/v3/mail/send", body=body, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202
        ids.add(resp.getheader("X-Message-Id"))
    conn.close()
    assert len(ids) == 20
