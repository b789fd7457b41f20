"""RFC 3464 DSNs → bounce events (inbound/dsn.py, inbound/ingest.py), on real samples.

The postfix-*.eml files are Postfix's own DSNs (tests/golden/dsn/generate.py); the others
follow the layout of Gmail, Outlook and Exim bounces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postline.deliver.verp import BadToken, MessageRef, ReturnPath
from postline.inbound import dsn, ingest, report
from postline.model.events import event_json

GOLDEN = Path(__file__).parents[1] / "golden" / "dsn"
# The envelope sender the golden files were made with (tests/golden/dsn/generate.py).
GOLDEN_RP = "bounces+kw66sg2mt5hwtgdpneveg3ew2qaaaxklbgsvzroula@bounces.example.com"
REF = MessageRef("acme", "Vb3pG0yfT2mYb2kqQ2yW1A.pl1.0", "Vb3pG0yfT2mYb2kqQ2yW1A", 0)
T = 1_800_000_000.0


def load(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def parse(name: str) -> dsn.DeliveryReport:
    got = dsn.parse(report.parse(load(name)))
    assert got is not None
    return got


def accept_golden(address: str) -> MessageRef:
    """A verifier that knows only the golden files' token."""
    if address.strip("<>").lower() != GOLDEN_RP:
        raise BadToken(f"unknown {address}")
    return REF


@pytest.mark.parametrize(
    ("name", "rcpt", "status", "code"),
    [
        ("postfix-remote-550.eml", "550-gone@example.net", "5.1.1", 550),
        ("gmail-style-550.eml", "nobody@gmail.com", "5.1.1", 550),
        ("outlook-style-5.1.10.eml", "nobody@contoso.com", "5.1.10", 550),
        ("exim-style-5.0.0.eml", "nobody@example.org", "5.1.1", 550),  # diagnostic wins
        ("postfix-gave-up-450.eml", "450-busy@example.net", "4.2.0", 450),
    ],
)
def test_failed_recipient_status_and_reply(name: str, rcpt: str, status: str, code: int) -> None:
    (r,) = parse(name).failed()
    assert r.recipient == rcpt
    got_code, text, got_status = r.reply()
    assert (got_code, got_status) == (code, status)
    assert not text.startswith(str(code)) and "550-5.1.1" not in text  # no repeated codes


def test_postfix_names_the_return_path_and_message_id() -> None:
    report_ = parse("postfix-remote-550.eml")
    assert report_.senders[0] == GOLDEN_RP
    assert report_.message_id == "<Vb3pG0yfT2mYb2kqQ2yW1A.0@pl1.example.com>"


def test_two_recipients_in_one_dsn() -> None:
    got = [(r.recipient, r.status) for r in parse("postfix-two-recipients.eml").failed()]
    assert got == [("550-gone@example.net", "5.1.1"), ("552-full@example.net", "5.2.2")]


def test_delayed_is_not_failed() -> None:
    report_ = parse("postfix-delayed.eml")
    assert [r.action for r in report_.recipients] == ["delayed"]
    assert report_.failed() == []


def test_not_a_dsn() -> None:
    plain = b"From: a@b\r\nTo: c@d\r\nSubject: Out of office\r\n\r\nAway.\r\n"
    assert dsn.parse(report.parse(plain)) is None
    assert dsn.parse(report.parse(load("rfc5965-b2-arf.eml"))) is None


def test_hard_bounce_event_and_suppression() -> None:
    d = ingest.decide(load("postfix-remote-550.eml"), [], accept_golden, T)
    assert d.code == ingest.EX_OK
    (event,) = [event_json(e) for e in d.events]
    assert event["event"] == "bounce" and event["email"] == "550-gone@example.net"
    assert event["sg_message_id"] == REF.sg_message_id
    assert event["smtp-id"] == "<Vb3pG0yfT2mYb2kqQ2yW1A.0@pl1.example.com>"
    assert (event["type"], event["status"]) == ("bounce", "5.1.1")
    assert event["bounce_classification"] == "Invalid Address"
    assert event["reason"].startswith("550 5.1.1 <550-gone@example.net>: Recipient address")
    assert event["timestamp"] == int(T)
    (sup,) = d.suppressions
    assert (sup.tenant, sup.list_name, sup.email, sup.status) == (
        "acme", "bounces", "550-gone@example.net", "5.1.1",
    )  # fmt: skip


def test_mailbox_full_is_reported_not_suppressed() -> None:
    d = ingest.decide(load("postfix-two-recipients.eml"), [], accept_golden, T)
    assert [event_json(e)["email"] for e in d.events] == [
        "550-gone@example.net",
        "552-full@example.net",
    ]
    assert [s.email for s in d.suppressions] == ["550-gone@example.net"]


def test_gave_up_with_a_transient_status_is_not_suppressed() -> None:
    d = ingest.decide(load("postfix-gave-up-450.eml"), [], accept_golden, T)
    (event,) = [event_json(e) for e in d.events]
    assert (event["type"], event["status"]) == ("bounce", "4.2.0")
    assert d.suppressions == []


def test_token_found_in_delivered_to_and_envelope() -> None:
    # Gmail's DSN has no X-Postfix-Sender nor Return-Path of ours: To / Delivered-To.
    d = ingest.decide(load("gmail-style-550.eml"), [], accept_golden, T)
    assert d.code == 0 and len(d.events) == 1
    d = ingest.decide(load("gmail-style-550.eml"), [GOLDEN_RP.upper()], accept_golden, T)
    assert d.code == 0 and len(d.events) == 1


def test_forged_token_is_refused_and_records_nothing() -> None:
    forged = GOLDEN_RP.replace("kw66", "kw67").encode()
    raw = load("postfix-remote-550.eml").replace(GOLDEN_RP.encode(), forged)
    d = ingest.decide(raw, [], ReturnPath(b"key").verify_for(["acme"], ["pl1"]), T)
    assert d.code == ingest.EX_NOUSER and d.events == [] and d.suppressions == []
    assert "refused" in d.line


def test_no_token_anywhere_is_refused() -> None:
    raw = load("postfix-remote-550.eml").replace(GOLDEN_RP.encode(), b"someone@example.com")
    d = ingest.decide(raw, [], accept_golden, T)
    assert d.code == ingest.EX_NOUSER and not d.events


@pytest.mark.parametrize("name", ["postfix-delayed.eml"])
def test_ignored_reports_record_nothing(name: str) -> None:
    d = ingest.decide(load(name), [], accept_golden, T)
    assert d.code == 0 and not d.events and d.line.startswith("ignored")


def test_auto_reply_is_ignored() -> None:
    raw = f"From: a@b\r\nTo: {GOLDEN_RP}\r\nSubject: Out of office\r\n\r\nAway.\r\n".encode()
    d = ingest.decide(raw, [], accept_golden, T)
    assert d.code == 0 and not d.events
