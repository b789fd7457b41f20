"""Unit tests of :mod:`postline.accept.expand`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from postline.accept.expand import expand, unique_recipients
from postline.model.events import event_json
from postline.model.mail import (
    MailSendRequest,
    decode_body,
    decode_personalization,
    decode_request,
)
from postline.spool.interface import AcceptBatch

NOW = 1_700_000_000.0
XID = "AbCdEfGhIjKlMnOpQrStUv"


def request(**extra: Any) -> MailSendRequest:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.com"}]}],
        "from": {"email": "alice@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    body.update(extra)
    return decode_request(json.dumps(body).encode())


def run(req: MailSendRequest, **kw: Any) -> AcceptBatch:
    args: dict[str, Any] = {
        "tenant": "acme",
        "node": "n1",
        "host": "mx.example.net",
        "now": NOW,
        "max_age": 86400.0,
        "x_message_id": XID,
    }
    args.update(kw)
    return expand(req, **args)


def events(batch: AcceptBatch) -> list[dict[str, Any]]:
    return [event_json(e) for e in batch.events]


def test_one_message_per_personalization_with_ids() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "a@example.com"}]},
            {"to": [{"email": "b@example.com"}], "subject": "B"},
        ]
    )
    batch = run(req)
    assert batch.tenant == "acme"
    assert [m.sg_message_id for m in batch.messages] == [f"{XID}.n1.0", f"{XID}.n1.1"]
    assert [m.smtp_id for m in batch.messages] == [
        f"<{XID}.0@mx.example.net>",
        f"<{XID}.1@mx.example.net>",
    ]
    assert (batch.created_at, batch.expires_at) == (NOW, NOW + 86400.0)


def test_blobs_round_trip() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "a@example.com", "name": "A"}], "dynamic_template_data": {"x": [1]}},
            {"to": [{"email": "b@example.com"}], "custom_args": {"k": "v"}},
        ],
        categories=["c"],
    )
    batch = run(req)
    assert decode_body(batch.body) == req.body()
    assert [decode_personalization(m.personalization) for m in batch.messages] == (
        req.personalizations
    )


def test_recipients_deduplicated_case_insensitively_in_order() -> None:
    req = request(
        personalizations=[
            {
                "to": [{"email": "Bob@Example.com"}, {"email": "carol@example.com"}],
                "cc": [{"email": "bob@example.com"}, {"email": "dave@example.com"}],
                "bcc": [{"email": "CAROL@example.com"}, {"email": "erin@example.com"}],
            }
        ]
    )
    batch = run(req)
    expected = ["Bob@Example.com", "carol@example.com", "dave@example.com", "erin@example.com"]
    assert batch.messages[0].recipients == expected
    assert [e["email"] for e in events(batch)] == expected
    assert unique_recipients(req.personalizations[0]) == expected  # type: ignore[index]


def test_due_at() -> None:
    req = request(
        send_at=int(NOW) + 100,
        personalizations=[
            {"to": [{"email": "a@example.com"}]},
            {"to": [{"email": "b@example.com"}], "send_at": int(NOW) + 500},
            {"to": [{"email": "c@example.com"}], "send_at": int(NOW) - 500},
            {"to": [{"email": "d@example.com"}], "send_at": 0},  # wins over the global one
        ],
    )
    assert [m.due_at for m in run(req).messages] == [NOW + 100, NOW + 500, NOW, NOW]
    assert [m.due_at for m in run(request()).messages] == [NOW]
    assert [m.due_at for m in run(request(send_at=1)).messages] == [NOW]


def test_processed_events() -> None:
    req = request(
        personalizations=[
            {
                "to": [{"email": "a@example.com"}],
                "cc": [{"email": "b@example.com"}],
                "custom_args": {"user": "42", "campaign": "override"},
                "send_at": int(NOW) + 60,
            },
            {"to": [{"email": "c@example.com"}]},
        ],
        categories=["news", "weekly"],
        custom_args={"campaign": "spring", "tier": "gold"},
    )
    batch = run(req)
    assert [(e.event, e.email, e.tenant, e.ts) for e in batch.events] == [
        ("processed", "a@example.com", "acme", NOW),
        ("processed", "b@example.com", "acme", NOW),
        ("processed", "c@example.com", "acme", NOW),
    ]
    first, _, third = events(batch)
    assert first["sg_message_id"] == f"{XID}.n1.0"
    assert first["smtp-id"] == f"<{XID}.0@mx.example.net>"
    assert first["category"] == ["news", "weekly"]
    assert first["timestamp"] == int(NOW)
    assert first["send_at"] == int(NOW) + 60
    assert (first["campaign"], first["tier"], first["user"]) == ("override", "gold", "42")
    assert third["sg_message_id"] == f"{XID}.n1.1"
    assert (third["campaign"], third["send_at"]) == ("spring", 0)
    assert "user" not in third
    assert len({e["sg_event_id"] for e in events(batch)}) == 3


def test_global_send_at_in_processed_event() -> None:
    req = request(send_at=int(NOW) + 7)
    assert events(run(req))[0]["send_at"] == int(NOW) + 7


def test_custom_args_cannot_shadow_reserved_keys() -> None:
    req = request(custom_args={"event": "delivered", "email": "x@y.z", "campaign": "c"})
    ev = events(run(req))[0]
    assert (ev["event"], ev["email"], ev["campaign"]) == ("processed", "bob@example.com", "c")


class Suppressions:
    def __init__(self, lists: Mapping[str, str]) -> None:
        self.lists = {k.lower(): v for k, v in lists.items()}
        self.calls: list[list[str]] = []

    def __call__(self, emails: list[str]) -> dict[str, str]:
        self.calls.append(list(emails))
        return {e: self.lists[e.lower()] for e in emails if e.lower() in self.lists}


def test_suppressed_recipients_are_dropped() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "a@example.com"}], "cc": [{"email": "Bounced@example.com"}]},
            {"to": [{"email": "c@example.com"}]},
        ],
        categories=["cat"],
        custom_args={"k": "v"},
    )
    suppressed = Suppressions({"bounced@example.com": "Bounced Address"})
    batch = run(req, suppressed=suppressed)
    assert [m.recipients for m in batch.messages] == [["a@example.com"], ["c@example.com"]]
    evs = events(batch)
    assert [(e["event"], e["email"]) for e in evs] == [
        ("processed", "a@example.com"),
        ("dropped", "Bounced@example.com"),
        ("processed", "c@example.com"),
    ]
    dropped = evs[1]
    assert (dropped["reason"], dropped["status"]) == ("Bounced Address", "5.0.0")
    assert dropped["sg_message_id"] == f"{XID}.n1.0"
    assert (dropped["category"], dropped["k"]) == (["cat"], "v")
    assert "send_at" not in dropped


def test_suppressed_is_asked_once_with_unique_recipients() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "a@example.com"}], "bcc": [{"email": "b@example.com"}]},
            {"to": [{"email": "A@example.com"}]},
        ]
    )
    suppressed = Suppressions({})
    batch = run(req, suppressed=suppressed)
    assert suppressed.calls == [["a@example.com", "b@example.com"]]
    assert len(batch.messages) == 2


def test_suppression_matches_case_insensitively() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "x@example.com"}]},
            {"to": [{"email": "X@Example.com"}]},
        ]
    )
    batch = run(req, suppressed=lambda emails: {"X@EXAMPLE.COM": "Unsubscribed Address"})
    assert batch.messages == []
    assert [(e.event, e.email) for e in batch.events] == [
        ("dropped", "x@example.com"),
        ("dropped", "X@Example.com"),
    ]


def test_fully_dropped_personalization_yields_events_but_no_message() -> None:
    req = request(
        personalizations=[
            {"to": [{"email": "gone@example.com"}]},
            {"to": [{"email": "ok@example.com"}]},
        ]
    )
    batch = run(req, suppressed=Suppressions({"gone@example.com": "Bounced Address"}))
    assert [m.sg_message_id for m in batch.messages] == [f"{XID}.n1.1"]
    assert [(e.event, e.sg_message_id) for e in batch.events] == [
        ("dropped", f"{XID}.n1.0"),
        ("processed", f"{XID}.n1.1"),
    ]
    assert decode_body(batch.body) == req.body()


def test_nothing_suppressed_with_empty_answer() -> None:
    batch = run(request(), suppressed=lambda emails: {})
    assert [e.event for e in batch.events] == ["processed"]
    assert batch.messages[0].recipients == ["bob@example.com"]


def test_events_meta_has_from_subject_template_and_group() -> None:
    req = request(
        template_id="d-123",
        asm={"group_id": 42},
        personalizations=[
            {"to": [{"email": "bob@example.com"}], "subject": "Own subject"},
            {"to": [{"email": "carol@example.com"}], "from": {"email": "p@example.com"}},
        ],
    )
    batch = run(req, suppressed=lambda emails: {"carol@example.com": "Bounced Address"})
    metas = {e.email: json.loads(e.meta) for e in batch.events}
    assert metas["bob@example.com"] == {
        "from_email": "alice@example.com",
        "subject": "Own subject",
        "template_id": "d-123",
        "asm_group_id": 42,
    }
    # a dropped recipient's event keeps the message's attributes (activity shows it too)
    assert metas["carol@example.com"]["from_email"] == "p@example.com"
    assert metas["carol@example.com"]["subject"] == "Hello"
    assert all("subject" not in event_json(e) for e in batch.events)
