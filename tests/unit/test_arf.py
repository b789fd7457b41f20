"""RFC 5965 complaints → spamreport events and the spam_reports list (inbound/arf.py)."""

from __future__ import annotations

from pathlib import Path

from postline.deliver.verp import BadToken, MessageRef
from postline.inbound import arf, ingest, report
from postline.model.events import event_json

GOLDEN = Path(__file__).parents[1] / "golden" / "dsn"
GOLDEN_RP = "bounces+kw66sg2mt5hwtgdpneveg3ew2qaaaxklbgsvzroula@bounces.example.com"
REF = MessageRef("acme", "Vb3pG0yfT2mYb2kqQ2yW1A.pl1.0", "Vb3pG0yfT2mYb2kqQ2yW1A", 0)


def load(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def accept_golden(address: str) -> MessageRef:
    if address.strip("<>").lower() != GOLDEN_RP:
        raise BadToken(f"unknown {address}")
    return REF


def test_rfc5965_example_fields() -> None:
    got = arf.parse(report.parse(load("rfc5965-b2-arf.eml")))
    assert got is not None
    assert got.feedback_type == "abuse" and got.is_complaint()
    assert got.recipients == ["user@example.com"]  # Original-Rcpt-To
    assert got.senders == ["somespammer@example.net"]  # Original-Mail-From
    assert got.user_agent == "SomeGenerator/1.0"


def test_rfc5965_example_is_not_ours() -> None:
    d = ingest.decide(load("rfc5965-b2-arf.eml"), [], accept_golden, 0.0)
    assert d.code == ingest.EX_NOUSER and not d.events and not d.suppressions


def test_redacted_report_uses_the_returned_to() -> None:
    got = arf.parse(report.parse(load("fbl-redacted-arf.eml")))
    assert got is not None and got.recipients == ["reader@example-isp.com"]


def test_complaint_event_and_suppression() -> None:
    d = ingest.decide(load("fbl-redacted-arf.eml"), [], accept_golden, 1_800_000_000.0)
    assert d.code == 0
    (event,) = [event_json(e) for e in d.events]
    assert event["event"] == "spamreport" and event["email"] == "reader@example-isp.com"
    assert event["sg_message_id"] == REF.sg_message_id
    (sup,) = d.suppressions
    assert (sup.tenant, sup.list_name, sup.email) == (
        "acme",
        "spam_reports",
        "reader@example-isp.com",
    )


def test_not_spam_report_is_ignored() -> None:
    raw = load("fbl-redacted-arf.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    d = ingest.decide(raw, [], accept_golden, 0.0)
    assert d.code == 0 and not d.events and d.line.startswith("ignored")


def test_dsn_is_not_arf() -> None:
    assert arf.parse(report.parse(load("postfix-remote-550.eml"))) is None
