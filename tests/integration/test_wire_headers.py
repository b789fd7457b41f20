"""Headers the sender set, and Message-ID / Date, as they arrive at a real receiver (issue 12,
items 3 and 4).

A real node delivers to the fake destination MTA on loopback (or aiosmtpd, for a retry);
the delivered bytes are parsed with Python's email parser. A header that would have been
accepted and dropped is either on the wire or refused with a 400 naming it.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from tests.conftest import SpoolSnapshot, call, simple_mail
from tests.integration.test_delivery import fast_config, wait_for

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.node import NodeProcess


@pytest.fixture(scope="module")
def mx() -> Iterator[FakeSmtpServer]:
    with running_in_thread(FakeSmtpServer()) as server:
        yield server


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, mx: FakeSmtpServer) -> Iterator[NodeProcess]:
    # Default Message-ID settings: helo_name "localhost", and this box's FQDN is "localhost".
    node = NodeProcess(tmp_path_factory.mktemp("wire-headers"), fast_config(mx.port))
    node.start()
    node.key = node.create_key()  # type: ignore[attr-defined]
    yield node
    node.stop()


def post(node: Any, mail: dict[str, Any]) -> tuple[int, Any]:
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.key)
    return r.status, (r.json() if r.status != 202 else r.headers["x-message-id"])


def deliver(node: Any, mx: FakeSmtpServer, mail: dict[str, Any]) -> tuple[Message, str]:
    """Send ``mail`` (202) and return the message the destination got, and its X-Message-Id."""
    case = f"case-{time.monotonic_ns()}"
    mail.setdefault("headers", {})["X-Case"] = case
    status, x_id = post(node, mail)
    assert status == 202, x_id
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for tx in list(mx.transactions):
            if case.encode() in tx.data:
                return message_from_bytes(tx.data), x_id
        time.sleep(0.05)
    raise AssertionError(f"not delivered: {node.log_tail()}")


def refused(node: Any, mx: FakeSmtpServer, mail: dict[str, Any]) -> list[tuple[str, str]]:
    """POST ``mail``, expect a 400; return its (field, message) pairs. Nothing is sent."""
    before = len(mx.transactions)
    status, body = post(node, mail)
    assert status == 400, body
    assert len(mx.transactions) == before
    return [(e["field"], e["message"]) for e in body["errors"]]


def events_of(node: Any, x_id: str, kind: str) -> list[dict[str, Any]]:
    snap: SpoolSnapshot = wait_for(
        node, lambda s: any(e["sg_message_id"].startswith(x_id) for e in s.of_type(kind))
    )
    return [e for e in snap.of_type(kind) if e["sg_message_id"].startswith(x_id)]


# -- attachments -----------------------------------------------------------------------------


def test_attachment_type_parameters_arrive(node: Any, mx: FakeSmtpServer) -> None:
    csv = "name;price\r\ncafé;3\r\n".encode("cp1252")
    attachment = {
        "content": base64.b64encode(csv).decode(),
        "filename": "prices.csv",
        "type": "text/csv; charset=windows-1252",
    }
    msg, _ = deliver(node, mx, simple_mail(attachments=[attachment]))
    (part,) = [p for p in msg.walk() if p.get_filename() == "prices.csv"]
    assert part.get_content_type() == "text/csv"
    assert part.get_param("charset") == "windows-1252"  # was dropped: read as ASCII/UTF-8
    assert part.get_payload(decode=True) == csv


def test_malformed_attachment_parameters_are_a_400(node: Any, mx: FakeSmtpServer) -> None:
    attachment = {"content": "aGk=", "filename": "a.csv", "type": "text/csv; charset"}
    errors = refused(node, mx, simple_mail(attachments=[attachment]))
    assert [f for f, _ in errors] == ["attachments.0.type"]


# -- Message-ID ------------------------------------------------------------------------------


def test_custom_message_id_is_sent_and_names_the_events(node: Any, mx: FakeSmtpServer) -> None:
    mid = "<order-1234.reply@app.example.com>"
    msg, x_id = deliver(node, mx, simple_mail(headers={"message-id": mid}))
    assert msg.get_all("Message-ID") == [mid]
    (processed,) = events_of(node, x_id, "processed")
    (delivered,) = events_of(node, x_id, "delivered")
    assert processed["smtp-id"] == delivered["smtp-id"] == mid


def test_personalization_message_id_wins(node: Any, mx: FakeSmtpServer) -> None:
    mail = simple_mail(headers={"Message-ID": "<global@app.example.com>"})
    mail["personalizations"][0]["headers"] = {"Message-ID": "<own@app.example.com>"}
    msg, _ = deliver(node, mx, mail)
    assert msg.get_all("Message-ID") == ["<own@app.example.com>"]


@pytest.mark.parametrize(
    "value", ["abc@app.example.com", "<abc>", "<a b@example.com>", "<@example.com>", "<é@x.y>"]
)
def test_malformed_message_id_is_a_400(node: Any, mx: FakeSmtpServer, value: str) -> None:
    errors = refused(node, mx, simple_mail(headers={"Message-ID": value}))
    assert [f for f, _ in errors] == ["headers.Message-ID"]
    assert "Message-ID" in errors[0][1] and "angle brackets" in errors[0][1]


def test_generated_message_id_is_never_at_localhost(node: Any, mx: FakeSmtpServer) -> None:
    """No usable host name here (helo_name and FQDN are "localhost"): the From domain."""
    msg, x_id = deliver(node, mx, simple_mail())
    mid = msg["Message-ID"]
    assert mid == f"<{x_id}.0@example.com>", mid
    (delivered,) = events_of(node, x_id, "delivered")
    assert delivered["smtp-id"] == mid


def test_message_id_domain_from_config(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = fast_config(fake_mx.port, message_id_domain="mid.example.net")
    other = node_factory(cfg).start()
    other.key = other.create_key()
    msg, x_id = deliver(other, fake_mx, simple_mail())
    assert msg["Message-ID"] == f"<{x_id}.0@mid.example.net>"


# -- Date ------------------------------------------------------------------------------------


def test_custom_date_is_kept(node: Any, mx: FakeSmtpServer) -> None:
    date = "Tue, 02 Jan 2024 03:04:05 +0100"
    msg, _ = deliver(node, mx, simple_mail(headers={"Date": date}))
    assert msg.get_all("Date") == [date]


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "Wed, 02 Jan 2024 03:04:05 +0100",  # 2 Jan 2024 was a Tuesday
        "Tue, 30 Feb 2024 03:04:05 +0000",
        "Tue, 02 Jan 2024 03:04:05 CET",
        "2024-01-02T03:04:05Z",
    ],
)
def test_malformed_date_is_a_400(node: Any, mx: FakeSmtpServer, value: str) -> None:
    errors = refused(node, mx, simple_mail(headers={"Date": value}))
    assert [f for f, _ in errors] == ["headers.Date"]
    assert "RFC 5322" in errors[0][1]


def test_generated_date_is_the_acceptance_time(node: Any, mx: FakeSmtpServer) -> None:
    msg, x_id = deliver(node, mx, simple_mail())
    (processed,) = events_of(node, x_id, "processed")
    assert _epoch(msg["Date"]) == processed["timestamp"]


def _epoch(date: str) -> int:
    return int(parsedate_to_datetime(date).timestamp())


# -- reply-to substitutions ------------------------------------------------------------------


def test_substitutions_apply_to_reply_to(node: Any, mx: FakeSmtpServer) -> None:
    mail = simple_mail(
        reply_to={"email": "desk+-ticket-@example.com", "name": "Desk -ticket-"},
        subject="About -ticket-",
    )
    mail["personalizations"][0]["substitutions"] = {"-ticket-": "T42"}
    msg, _ = deliver(node, mx, mail)
    assert parseaddr(msg["Reply-To"]) == ("Desk T42", "desk+T42@example.com")
    assert msg["Subject"] == "About T42"


# -- headers a recipient must never see from the sender --------------------------------------


@pytest.mark.parametrize(
    "name", ["Return-Path", "X-SMTPAPI", "Received", "DKIM-Signature", "MIME-Version"]
)
@pytest.mark.parametrize("where", ["global", "personalization"])
def test_trace_headers_are_refused(node: Any, mx: FakeSmtpServer, name: str, where: str) -> None:
    mail = simple_mail()
    headers = {name: "x"}
    if where == "global":
        mail["headers"], field = headers, f"headers.{name}"
    else:
        mail["personalizations"][0]["headers"] = headers
        field = f"personalizations.0.headers.{name}"
    errors = refused(node, mx, mail)
    assert [f for f, _ in errors] == [field]
    assert name in errors[0][1]


def test_sender_other_than_from_is_refused(node: Any, mx: FakeSmtpServer) -> None:
    errors = refused(node, mx, simple_mail(headers={"Sender": "Bulk <bulk@elsewhere.example>"}))
    assert [f for f, _ in errors] == ["headers.Sender"]
    assert "sending identities" in errors[0][1] and "alice@example.com" in errors[0][1]


def test_sender_equal_to_from_is_kept(node: Any, mx: FakeSmtpServer) -> None:
    msg, _ = deliver(node, mx, simple_mail(headers={"Sender": "Alice <ALICE@example.com>"}))
    assert msg.get_all("Sender") == ["Alice <ALICE@example.com>"]


# -- a retried message keeps its Date and Message-ID -----------------------------------------


class _DeferUntilOpen:
    """aiosmtpd handler: 451 at end of data until ``open`` is set; records every attempt."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.attempts: list[tuple[bool, bytes]] = []  # (accepted, data)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = bytes(envelope.original_content or b"")
        accepted = self.open.is_set()
        self.attempts.append((accepted, data))
        return "250 2.0.0 Ok" if accepted else "451 4.3.0 Try again later"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_retry_keeps_date_and_message_id(node_factory: Any, tmp_path: Path) -> None:
    handler = _DeferUntilOpen()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        other = node_factory(fast_config(controller.port, retry_min="300ms", retry_max="500ms"))
        other.start()
        status, x_id = post_with(other, simple_mail())
        assert status == 202
        (processed,) = events_of(other, x_id, "processed")
        _wait(lambda: bool(handler.attempts))
        # Retries from here on happen at least a second after the acceptance (Date has
        # one-second resolution): a Date made at the attempt would differ.
        _wait(lambda: time.time() >= processed["timestamp"] + 2, timeout=5)
        handler.open.set()
        _wait(lambda: any(ok for ok, _ in handler.attempts))
    finally:
        controller.stop()
    msgs = [message_from_bytes(data) for _, data in handler.attempts]
    assert len(msgs) >= 2
    assert {m["Date"] for m in msgs} == {msgs[0]["Date"]}
    assert {m["Message-ID"] for m in msgs} == {msgs[0]["Message-ID"]}
    assert _epoch(msgs[-1]["Date"]) == processed["timestamp"]


def post_with(node: Any, mail: dict[str, Any]) -> tuple[int, str]:
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.create_key())
    return r.status, r.headers.get("x-message-id", r.body.decode())


def _wait(done: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
