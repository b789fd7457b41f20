"""POST /v3/mail/send over real HTTP: success, every validation rule, nothing stored on error."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import time
from typing import Any

import pytest
from tests.conftest import call, simple_mail, spool_snapshot


def _p(**fields: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"to": [{"email": "bob@example.com"}]}
    p.update(fields)
    return p


def _with(**top: Any) -> dict[str, Any]:
    m = simple_mail()
    for k, v in top.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    return m


B64 = base64.b64encode(b"hello").decode()

# (id, request body, expected status, expected field (or None), text expected in the message)
BAD: list[tuple[str, Any, int, str | None, str]] = [
    ("no personalizations", _with(personalizations=[]), 400, "personalizations", "at least one"),
    ("missing personalizations", _with(personalizations=None), 400, "personalizations", ""),
    (
        "1001 personalizations",
        _with(personalizations=[_p(to=[{"email": f"u{i}@example.com"}]) for i in range(1001)]),
        400,
        "personalizations",
        "1000",
    ),
    (
        "1001 recipients",
        _with(
            personalizations=[
                _p(to=[{"email": f"u{i}@example.com"} for i in range(600)]),
                _p(to=[{"email": f"v{i}@example.com"} for i in range(401)]),
            ]
        ),
        400,
        None,
        "1000",
    ),
    (
        "personalization without to",
        _with(personalizations=[{"cc": [{"email": "c@example.com"}]}]),
        400,
        "personalizations.0.to",
        "to parameter is required",
    ),
    (
        "duplicate address",
        _with(
            personalizations=[
                _p(to=[{"email": "bob@example.com"}], cc=[{"email": "BOB@example.com"}])
            ]
        ),
        400,
        None,
        "unique",
    ),
    (
        "bad recipient email",
        _with(personalizations=[_p(to=[{"email": "not-an-email"}])]),
        400,
        "personalizations.0.to.0.email",
        "",
    ),
    ("missing from", _with(**{"from": None}), 400, "from", ""),
    ("bad from email", _with(**{"from": {"email": "nope"}}), 400, "from.email", ""),
    (
        "reply_to and reply_to_list",
        _with(reply_to={"email": "r@example.com"}, reply_to_list=[{"email": "s@example.com"}]),
        400,
        None,
        "reply_to",
    ),
    ("no subject", _with(subject=None), 400, "subject", ""),
    ("no content", _with(content=None), 400, "content", ""),
    (
        "html before plain",
        _with(
            content=[
                {"type": "text/html", "value": "<p>x</p>"},
                {"type": "text/plain", "value": "x"},
            ]
        ),
        400,
        None,
        "text/plain",
    ),
    ("CRLF in subject", _with(subject="Hi\r\nBcc: evil@example.com"), 400, "subject", ""),
    (
        "LF in personalization subject",
        _with(personalizations=[_p(subject="Hi\nX-Evil: 1")]),
        400,
        "personalizations.0.subject",
        "",
    ),
    ("CR in header value", _with(headers={"X-Test": "a\rb"}), 400, None, ""),
    (
        "LF in personalization header",
        _with(personalizations=[_p(headers={"X-Test": "a\nb"})]),
        400,
        None,
        "",
    ),
    (
        "CRLF in from name",
        _with(**{"from": {"email": "a@example.com", "name": "A\r\nBcc: x"}}),
        400,
        None,
        "",
    ),
    (
        "CRLF in to name",
        _with(personalizations=[_p(to=[{"email": "b@example.com", "name": "B\nX: y"}])]),
        400,
        None,
        "",
    ),
    ("reserved header", _with(headers={"Subject": "x"}), 400, None, "reserved"),
    (
        "reserved header in personalization",
        _with(personalizations=[_p(headers={"DKIM-Signature": "x"})]),
        400,
        None,
        "reserved",
    ),
    ("11 categories", _with(categories=[f"c{i}" for i in range(11)]), 400, "categories", ""),
    ("duplicate categories", _with(categories=["a", "a"]), 400, "categories", ""),
    ("custom_args too big", _with(custom_args={"k": "v" * 10_001}), 400, None, "10,000"),
    ("custom_args not string", _with(custom_args={"k": 1}), 400, "custom_args", "string"),
    ("send_at beyond 72h", _with(send_at=int(time.time()) + 73 * 3600), 400, "send_at", "72 hours"),
    (
        "personalization send_at beyond 72h",
        _with(personalizations=[_p(send_at=int(time.time()) + 80 * 3600)]),
        400,
        None,
        "72 hours",
    ),
    (
        "attachment not base64",
        _with(attachments=[{"content": "!!!not base64!!!", "filename": "a.txt"}]),
        400,
        None,
        "",
    ),
    ("attachment without filename", _with(attachments=[{"content": B64}]), 400, None, ""),
    (
        "attachment bad disposition",
        _with(attachments=[{"content": B64, "filename": "a.txt", "disposition": "weird"}]),
        400,
        None,
        "",
    ),
    ("wrong type", _with(subject=5), 400, "subject", ""),
    ("not json", b"{nope", 400, None, ""),
    ("json array", b"[]", 400, None, ""),
]


@pytest.mark.parametrize(("name", "body", "status", "field", "text"), BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_refused_and_nothing_stored(
    accept_node: Any, name: str, body: Any, status: int, field: str | None, text: str
) -> None:
    key = accept_node.create_key()
    before = spool_snapshot(accept_node.data_dir)
    r = call(accept_node.http_port, "POST", "/v3/mail/send", body, key=key)
    assert r.status == status, r.body
    errors = r.json()["errors"]
    assert errors and all({"message", "field"} <= set(e) for e in errors)
    if field is not None:
        assert field in [e["field"] for e in errors], errors
    if text:
        assert any(text.lower() in e["message"].lower() for e in errors), errors
    after = spool_snapshot(accept_node.data_dir)
    assert (after.messages, after.bodies, len(after.events)) == (
        before.messages,
        before.bodies,
        len(before.events),
    )


def test_all_errors_reported_at_once(accept_node: Any) -> None:
    key = accept_node.create_key()
    body = _with(subject=None, categories=[f"c{i}" for i in range(11)], headers={"To": "x"})
    r = call(accept_node.http_port, "POST", "/v3/mail/send", body, key=key)
    assert r.status == 400
    assert len(r.json()["errors"]) >= 3


def test_oversized_request_is_413_before_the_body_is_read(accept_node: Any) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", accept_node.http_port), timeout=10) as s:
        s.sendall(b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"content too large" in reply


def test_message_over_30mb_is_413(accept_node: Any) -> None:
    key = accept_node.create_key()
    big = base64.b64encode(b"\0" * (30 * 1024 * 1024 + 10)).decode()
    body = _with(attachments=[{"content": big, "filename": "big.bin"}])
    r = call(accept_node.http_port, "POST", "/v3/mail/send", body, key=key)
    assert r.status == 413
    assert r.json()["errors"][0]["message"] == "content too large"
    assert spool_snapshot(accept_node.data_dir).messages == 0


def test_invalid_utf8_is_415(accept_node: Any) -> None:
    key = accept_node.create_key()
    raw = json.dumps(simple_mail()).encode().replace(b"Hi Bob", b"Hi \xff\xfe")
    r = call(
        accept_node.http_port,
        "POST",
        "/v3/mail/send",
        raw,
        key=key,
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 415
    assert spool_snapshot(accept_node.data_dir).messages == 0


def test_accepted_mail_is_spooled_with_processed_events(accept_node: Any) -> None:
    key = accept_node.create_key()
    mail = simple_mail(categories=["welcome"], custom_args={"campaign": "c1"})
    mail["personalizations"] = [
        _p(
            to=[{"email": "a@example.com"}],
            cc=[{"email": "c@example.com"}],
            bcc=[{"email": "b@example.org"}],
            custom_args={"user": "42"},
        ),
        _p(to=[{"email": "d@example.net"}]),
    ]
    r = call(accept_node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202 and r.body == b""
    x_id = r.headers["x-message-id"]
    assert len(x_id) == 22
    snap = spool_snapshot(accept_node.data_dir)
    assert snap.messages == 2 and snap.bodies == 1 and snap.queued == 4
    processed = snap.of_type("processed")
    assert sorted(e["email"] for e in processed) == [
        "a@example.com",
        "b@example.org",
        "c@example.com",
        "d@example.net",
    ]
    first = next(e for e in processed if e["email"] == "a@example.com")
    assert first["sg_message_id"].startswith(x_id) and first["sg_message_id"].endswith(".0")
    assert first["smtp-id"].startswith("<" + x_id)
    assert first["category"] == ["welcome"]
    assert first["campaign"] == "c1" and first["user"] == "42"
    assert {"timestamp", "sg_event_id"} <= set(first)
    assert len({e["sg_event_id"] for e in processed}) == 4


def test_body_stored_once_for_many_personalizations(accept_node: Any) -> None:
    key = accept_node.create_key()
    mail = simple_mail()
    mail["personalizations"] = [_p(to=[{"email": f"u{i}@example.com"}]) for i in range(1000)]
    r = call(accept_node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202
    snap = spool_snapshot(accept_node.data_dir)
    assert (snap.messages, snap.bodies, snap.queued) == (1000, 1, 1000)


def test_sandbox_mode_validates_and_stores_nothing(accept_node: Any) -> None:
    key = accept_node.create_key()
    good = simple_mail(mail_settings={"sandbox_mode": {"enable": True}})
    r = call(accept_node.http_port, "POST", "/v3/mail/send", good, key=key)
    assert r.status == 200 and r.body == b""
    bad = copy.deepcopy(good)
    bad["subject"] = "a\r\nb"
    assert call(accept_node.http_port, "POST", "/v3/mail/send", bad, key=key).status == 400
    snap = spool_snapshot(accept_node.data_dir)
    assert snap.messages == 0 and snap.events == []


def test_gzip_body(accept_node: Any) -> None:
    key = accept_node.create_key()
    raw = gzip.compress(json.dumps(simple_mail()).encode())
    r = call(
        accept_node.http_port,
        "POST",
        "/v3/mail/send",
        raw,
        key=key,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status == 202
    assert spool_snapshot(accept_node.data_dir).messages == 1


def test_official_sendgrid_client(accept_node: Any) -> None:
    import sendgrid
    from sendgrid.helpers.mail import Mail

    key = accept_node.create_key()
    sg = sendgrid.SendGridAPIClient(api_key=key, host=accept_node.base_url)
    message = Mail(
        from_email="alice@example.com",
        to_emails=["bob@example.com", "carol@example.org"],
        subject="Hello from the official client",
        html_content="<strong>hi</strong>",
        plain_text_content="hi",
    )
    resp = sg.send(message)
    assert resp.status_code == 202
    assert resp.headers["X-Message-Id"]
    snap = spool_snapshot(accept_node.data_dir)
    assert sorted(e["email"] for e in snap.of_type("processed")) == [
        "bob@example.com",
        "carol@example.org",
    ]


def test_official_client_sees_sendgrid_error_shape(accept_node: Any) -> None:
    import sendgrid
    from python_http_client.exceptions import HTTPError

    sg = sendgrid.SendGridAPIClient(api_key="SG.wrong.key", host=accept_node.base_url)
    with pytest.raises(HTTPError) as info:
        sg.client.mail.send.post(request_body=simple_mail())
    assert info.value.status_code == 401
    assert "errors" in json.loads(info.value.body)
