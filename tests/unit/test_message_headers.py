"""Unit tests of the header rules of issue 12 (items 3 and 4): accept/headers.py, the
Message-ID host and smtp-id in accept/expand.py, and Date / Sender / Reply-To in render."""

from __future__ import annotations

import json
import socket
from email import message_from_bytes
from email.header import decode_header, make_header
from typing import Any

import pytest

from postline.accept import expand as ex
from postline.accept.headers import date_ok, message_id_ok
from postline.accept.validate import validate
from postline.deliver.render import render
from postline.model.mail import MailBody, Personalization, decode_request, mailbox_of

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000


def request(**extra: Any) -> Any:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.com"}]}],
        "from": {"email": "alice@shop.example"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    body.update(extra)
    return decode_request(json.dumps(body).encode())


# -- syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Tue, 02 Jan 2024 03:04:05 +0000",
        "2 Jan 2024 03:04 -0530",
        "tue,  02 JAN 2024 03:04:05 +0100",
        "Sat, 31 Dec 2016 23:59:60 +0000",  # a leap second
        "  Thu, 29 Feb 2024 00:00:00 +1400 ",
    ],
)
def test_rfc5322_dates(value: str) -> None:
    assert date_ok(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Mon, 02 Jan 2024 03:04:05 +0000",  # a Tuesday
        "Tue, 02 Jan 24 03:04:05 +0000",  # obsolete two-digit year
        "Tue, 02 Jan 2024 03:04:05 GMT",  # obsolete zone name
        "Tue, 02 Jan 2024 24:00:00 +0000",
        "Tue, 02 Jan 2024 03:04:05 +0060",
        "Thu, 29 Feb 2023 03:04:05 +0000",
        "Tue, 02 Foo 2024 03:04:05 +0000",
        "Tue, 02 Jan 1899 03:04:05 +0000",
    ],
)
def test_not_rfc5322_dates(value: str) -> None:
    assert not date_ok(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("<a@b>", True),
        ("<x.y+z@[10.0.0.1]>", True),
        (" <a.b@c.example> ", True),
        ("a@b", False),
        ("<a@b", False),
        ("<a..b@c>", False),
        ("<a@b@c>", False),
        ("<" + "a" * 900 + "@b>", False),
    ],
)
def test_message_id_syntax(value: str, ok: bool) -> None:
    assert message_id_ok(value) is ok


def test_mailbox_of() -> None:
    assert mailbox_of("Alice <a@b.example>") is not None
    assert mailbox_of("a@b.example, c@d.example") is None
    assert mailbox_of("no address") is None


# -- the Message-ID host ---------------------------------------------------------------------


def test_message_id_domain_configured_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: "node7.example.net")
    assert ex.message_id_domain("MID.Example.com", "mta.example.org") == "mid.example.com"
    assert ex.message_id_domain("", "mta.example.org") == "mta.example.org"
    assert ex.message_id_domain("", "localhost") == "node7.example.net"


@pytest.mark.parametrize("fqdn", ["localhost", "localhost.localdomain", "box", "ip6-localhost"])
def test_no_usable_host_means_the_from_domain(monkeypatch: pytest.MonkeyPatch, fqdn: str) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: fqdn)
    assert ex.message_id_domain("", "localhost") == ""
    batch = ex.expand(
        request(), tenant="t", node="n", host="", now=NOW, max_age=60, x_message_id="X"
    )
    assert batch.messages[0].smtp_id == "<X.0@shop.example>"


@pytest.mark.parametrize("name", ["10.0.0.1", "printer.local", "a.invalid", "-x.example"])
def test_unusable_host_names(name: str) -> None:
    assert not ex.host_usable(name)


def test_custom_message_id_is_the_smtp_id() -> None:
    req = request(headers={"Message-Id": "<shared@app.example>"})
    req.personalizations.append(  # type: ignore[union-attr]
        Personalization(
            to=[req.personalizations[0].to[0]],  # type: ignore[index]
            headers={"MESSAGE-ID": "<own@app.example>"},
        )
    )
    batch = ex.expand(req, tenant="t", node="n", host="h.example", now=NOW, max_age=60,
                      x_message_id="X")  # fmt: skip
    assert [m.smtp_id for m in batch.messages] == ["<shared@app.example>", "<own@app.example>"]
    assert {e.sg_message_id: json.loads(e.data)["smtp-id"] for e in batch.events} == {
        "X.n.0": "<shared@app.example>",
        "X.n.1": "<own@app.example>",
    }


# -- render: Date, Sender, Reply-To ----------------------------------------------------------


def rendered(body: MailBody, pers: Personalization, date: float = NOW) -> Any:
    return message_from_bytes(render(body, pers, message_id="<m@x.example>", date=date).data)


def body(**extra: Any) -> MailBody:
    return MailBody(**{"from_": mailbox_of("alice@shop.example"), "subject": "s", **extra})


def to() -> Personalization:
    return Personalization(to=[mailbox_of("bob@example.com")])  # type: ignore[list-item]


def test_date_is_the_acceptance_time_or_a_later_send_at() -> None:
    assert rendered(body(), to())["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    later = body(send_at=int(NOW) + 3600)
    assert rendered(later, to())["Date"] == "Tue, 14 Nov 2023 23:13:20 +0000"
    earlier = body(send_at=int(NOW) - 3600)
    assert rendered(earlier, to())["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"


def test_custom_date_wins_and_personalization_over_global() -> None:
    mail = body(headers={"date": "Tue, 02 Jan 2024 03:04:05 +0100"})
    assert rendered(mail, to()).get_all("Date") == ["Tue, 02 Jan 2024 03:04:05 +0100"]
    pers = to()
    pers.headers = {"Date": "Wed, 03 Jan 2024 03:04:05 +0100"}
    assert rendered(mail, pers).get_all("Date") == ["Wed, 03 Jan 2024 03:04:05 +0100"]


def test_sender_is_an_address_field_without_substitution() -> None:
    pers = to()
    pers.substitutions = {"-x-": "y"}
    msg = rendered(body(headers={"Sender": "Ä -x- <alice@shop.example>"}), pers)
    (sender,) = msg.get_all("Sender")
    assert str(make_header(decode_header(sender))) == "Ä -x- <alice@shop.example>"


def test_reply_to_list_is_substituted() -> None:
    pers = to()
    pers.substitutions = {"%agent%": "kim"}
    reply = [mailbox_of("Agent %agent% <%agent%@help.example>"), mailbox_of("desk@help.example")]
    msg = rendered(body(reply_to_list=reply), pers)
    assert msg["Reply-To"] == "Agent kim <kim@help.example>, desk@help.example"


def test_reply_to_growth_counts_toward_the_size_limit() -> None:
    local = "-k-" * 20  # 60 characters, and up to 3 digits
    reply = [{"email": f"{local}{i}@example.com"} for i in range(1000)]
    subs = {"-k-": "x" * 9_990}
    req = request(
        reply_to_list=reply,
        personalizations=[{"to": [{"email": "b@c.example"}], "substitutions": subs}],
    )
    errors = validate(req, NOW)
    assert [e.field for e in errors] == ["personalizations.0.substitutions"]
