"""Rendering: golden files, and the stdlib parser reading back what we wrote.

Golden files are the exact bytes for a few representative messages. After an intended
change, regenerate them with ``POSTLINE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render.py``
and review the diff.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from postline.deliver.render import RenderedMessage, RenderError, render
from postline.model.mail import Attachment, Content, EmailAddress, MailBody, Personalization

GOLDEN = Path(__file__).parent.parent / "golden"
DATE = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2).decode()
PDF = base64.b64encode(b"%PDF-1.4\n" + b"x" * 300).decode()


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(part: Message) -> str:
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def sender(name: str | None = "Example News") -> EmailAddress:
    return EmailAddress("news@example.com", name)


SAMPLES: dict[str, tuple[MailBody, Personalization]] = {
    "text_only": (
        MailBody(
            from_=sender(),
            subject="Your receipt",
            content=[Content("text/plain", "Thanks for your order.\n\nTotal: $10.00\n")],
        ),
        Personalization(to=[EmailAddress("alice@example.org")]),
    ),
    "alternative_unicode": (
        MailBody(
            from_=sender("Société Générale, Paris"),
            reply_to=EmailAddress("support@example.com", "Support Team"),
            subject="Ünïcödé subject for -name-: a rather long line that must be folded twice over",
            content=[
                Content("text/plain", "Hello -name-,\ncafé crème at 10:00.   \n.\nFrom here on\n"),
                Content("text/html", "<p>Hello <b>-name-</b>, café crème</p>"),
            ],
            headers={"X-Campaign": "spring -name-", "List-Unsubscribe": "<mailto:u@example.com>"},
        ),
        Personalization(
            to=[EmailAddress("bob@example.org", "Bob O'Neil"), EmailAddress("c@example.org")],
            cc=[EmailAddress("dave@example.net", "Smith, Dave")],
            bcc=[EmailAddress("hidden@example.net")],
            headers={"X-Campaign": "override", "X-User": "42"},
            substitutions={"-name-": "Bob"},
        ),
    ),
    "mixed_related": (
        MailBody(
            from_=sender(),
            subject="Report",
            content=[
                Content("text/plain", "See the attached report."),
                Content("text/html", '<p>See <img src="cid:logo@x"> the report.</p>'),
            ],
            attachments=[
                Attachment(PNG, "logo.png", "image/png", "inline", "logo@x"),
                Attachment(
                    PDF,
                    "Quarterly report – 2023 Q4 (final version, approved).pdf",
                    "application/pdf",
                ),
                Attachment("aGVsbG8=", "notes.txt"),
            ],
        ),
        Personalization(to=[EmailAddress("alice@example.org", "Alice")]),
    ),
    "base64_body": (
        MailBody(
            from_=sender("東京支社"),
            subject="ご注文ありがとうございます。発送の準備ができ次第、改めてご連絡いたします。",
            content=[Content("text/plain", "こんにちは。\nご注文ありがとうございます。\n")],
        ),
        Personalization(to=[EmailAddress("taro@example.jp", "山田 太郎")]),
    ),
    "smtputf8": (
        MailBody(
            from_=EmailAddress("info@bücher.example", "Bücher"),
            subject="Hallo",
            content=[Content("text/plain", "Hallo!\n")],
        ),
        Personalization(to=[EmailAddress("jürgen@müller.example", "Jürgen")]),
    ),
}


def rendered(name: str) -> RenderedMessage:
    body, pers = SAMPLES[name]
    return render(body, pers, message_id=f"{name}@pl1.example.com", date=DATE)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden(name: str) -> None:
    data = rendered(name).data
    path = GOLDEN / f"{name}.eml"
    if os.environ.get("POSTLINE_UPDATE_GOLDEN"):
        path.write_bytes(data)
    assert data == path.read_bytes()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_wire_form(name: str) -> None:
    data = rendered(name).data
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")[:-1]
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert max(map(len, lines)) <= 998
    head = data.split(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert not parse(data).defects


def test_text_only_round_trip() -> None:
    r = rendered("text_only")
    msg = parse(r.data)
    assert (r.mail_from, r.smtputf8, r.eight_bit) == ("news@example.com", False, False)
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(msg) == "Thanks for your order.\n\nTotal: $10.00\n"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["Message-ID"] == "<text_only@pl1.example.com>"
    assert msg["MIME-Version"] == "1.0"
    assert str(msg["From"]) == "Example News <news@example.com>"


def test_alternative_round_trip() -> None:
    r = rendered("alternative_unicode")
    msg = parse(r.data)
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert text_of(plain) == "Hello Bob,\ncafé crème at 10:00.   \n.\nFrom here on\n"
    assert text_of(html) == "<p>Hello <b>Bob</b>, café crème</p>"
    assert msg["Subject"] == (
        "Ünïcödé subject for Bob: a rather long line that must be folded twice over"
    )
    assert msg["From"].addresses[0].display_name == "Société Générale, Paris"
    to = [(a.display_name, a.addr_spec) for a in msg["To"].addresses]
    assert to == [("Bob O'Neil", "bob@example.org"), ("", "c@example.org")]
    assert msg["Cc"].addresses[0].display_name == "Smith, Dave"
    assert str(msg["Reply-To"]) == "Support Team <support@example.com>"
    assert msg["Bcc"] is None and b"hidden@" not in r.data
    assert msg["X-Campaign"] == "override" and msg["X-User"] == "42"
    assert msg["List-Unsubscribe"] == "<mailto:u@example.com>"


def test_mixed_related_structure() -> None:
    msg = parse(rendered("mixed_related").data)
    tree = [(p.get_content_type(), p.get_content_disposition()) for p in msg.walk()]
    assert tree == [
        ("multipart/mixed", None),
        ("multipart/related", None),
        ("multipart/alternative", None),
        ("text/plain", None),
        ("text/html", None),
        ("image/png", "inline"),
        ("application/pdf", "attachment"),
        ("application/octet-stream", "attachment"),
    ]
    parts = list(msg.walk())
    assert parts[1].get_param("type") == "multipart/alternative"
    logo, pdf, notes = parts[5], parts[6], parts[7]
    assert logo["Content-ID"] == "<logo@x>"
    assert logo.get_content() == base64.b64decode(PNG)
    assert pdf.get_filename() == "Quarterly report – 2023 Q4 (final version, approved).pdf"
    assert pdf.get_content() == base64.b64decode(PDF)
    assert notes.get_filename() == "notes.txt" and notes.get_content() == b"hello"
    assert text_of(parts[3]) == "See the attached report."


def test_base64_body_and_b_encoded_words() -> None:
    r = rendered("base64_body")
    msg = parse(r.data)
    assert msg["Content-Transfer-Encoding"] == "base64"
    assert text_of(msg) == "こんにちは。\nご注文ありがとうございます。\n"
    assert msg["Subject"] == SAMPLES["base64_body"][0].subject
    assert b"=?utf-8?b?" in r.data
    assert msg["To"].addresses[0].display_name == "山田 太郎"
    head = r.data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(line) <= 76 for line in head if b"=?" in line)  # RFC 2047 §2


def test_smtputf8_only_for_non_ascii_local_parts() -> None:
    r = rendered("smtputf8")
    # RFC 6532 headers are UTF-8; BytesParser would read them as ASCII with surrogates.
    msg = email.message_from_string(r.data.decode("utf-8"), policy=email.policy.default)
    assert r.mail_from == "info@xn--bcher-kva.example"  # an IDN domain needs only IDNA
    assert (r.smtputf8, r.eight_bit) == (True, True)  # jürgen@ needs SMTPUTF8
    assert msg["To"].addresses[0].username == "jürgen"
    assert msg["To"].addresses[0].domain == "xn--mller-kva.example"
    body, pers = SAMPLES["text_only"]
    pers = Personalization(to=pers.to, bcc=[EmailAddress("ñandú@example.org")])
    hidden = render(body, pers, message_id="x@y", date=DATE)
    assert hidden.smtputf8 and not hidden.eight_bit


def test_personalization_overrides_from_and_subject() -> None:
    body, _ = SAMPLES["text_only"]
    pers = Personalization(
        to=[EmailAddress("a@example.org")],
        from_=EmailAddress("other@example.net", "Other"),
        subject="Just for you",
    )
    r = render(body, pers, message_id="m@x", date=DATE)
    msg = parse(r.data)
    assert r.mail_from == "other@example.net"
    assert str(msg["From"]) == "Other <other@example.net>"
    assert msg["Subject"] == "Just for you"


def test_reply_to_list() -> None:
    body = MailBody(
        from_=sender(),
        subject="s",
        content=[Content("text/plain", "x")],
        reply_to_list=[EmailAddress("a@example.com", "A"), EmailAddress("b@example.com")],
    )
    msg = parse(render(body, Personalization(to=[sender()]), message_id="m", date=DATE).data)
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["a@example.com", "b@example.com"]


def test_header_order_and_extra_headers() -> None:
    body, pers = SAMPLES["text_only"]
    extra = {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "X-SG-EID": "e1"}
    msg = parse(render(body, pers, message_id="m@x", date=DATE, headers_extra=extra).data)
    assert list(msg.keys()) == [
        "From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
        "List-Unsubscribe-Post", "X-SG-EID", "Content-Type", "Content-Transfer-Encoding",
    ]  # fmt: skip


def test_reserved_and_invalid_custom_headers_are_dropped() -> None:
    body = MailBody(
        from_=sender(),
        subject="s",
        content=[Content("text/plain", "x")],
        headers={"From": "evil@example.net", "Bcc": "x@example.net", "Bad Name": "v", "X-Ok": "1"},
    )
    msg = parse(render(body, Personalization(to=[sender()]), message_id="m", date=DATE).data)
    assert msg.get_all("From") is not None and len(msg.get_all("From") or []) == 1
    assert msg["Bcc"] is None and msg["X-Ok"] == "1"
    assert "Bad Name" not in msg


def test_line_breaks_in_values_cannot_inject_headers() -> None:
    body = MailBody(
        from_=EmailAddress("news@example.com", "News\r\nBcc: evil@example.net"),
        subject="Hi\r\nBcc: evil@example.net\nX-Evil: 1",
        content=[Content("text/plain", "x")],
        headers={"X-Note": "a\r\n\r\nbody injection"},
    )
    r = render(body, Personalization(to=[sender()]), message_id="m\r\nX: y", date=DATE)
    msg = parse(r.data)
    assert msg["Bcc"] is None and msg["X-Evil"] is None and msg["X"] is None
    assert msg["Subject"] == "Hi Bcc: evil@example.net X-Evil: 1"
    assert msg["X-Note"] == "a body injection"
    assert text_of(msg) == "x"


def test_substitutions_are_one_pass_longest_first() -> None:
    body = MailBody(
        from_=sender(),
        subject="-n- and -name-",
        content=[Content("text/plain", "Dear -name- (-n-)")],
        headers={"X-Sub": "-name-"},
    )
    pers = Personalization(to=[sender()], substitutions={"-name-": "-n-", "-n-": "N", "": "z"})
    msg = parse(render(body, pers, message_id="m", date=DATE).data)
    assert msg["Subject"] == "N and -n-"
    assert text_of(msg) == "Dear -n- (N)"
    assert msg["X-Sub"] == "-n-"


def test_text_without_final_newline_round_trips_exactly() -> None:
    long_line = "word " * 100 + "end"
    body = MailBody(from_=sender(), subject="s", content=[Content("text/plain", long_line)])
    r = render(body, Personalization(to=[sender()]), message_id="m", date=DATE)
    assert text_of(parse(r.data)) == long_line
    assert max(map(len, r.data.split(b"\r\n"))) <= 78  # QP soft breaks at 76


def test_no_content_renders_an_empty_text_part() -> None:
    body = MailBody(from_=sender(), subject="s")
    msg = parse(render(body, Personalization(to=[sender()]), message_id="m", date=DATE).data)
    assert msg.get_content_type() == "text/plain" and text_of(msg) == ""


def test_content_type_parameters_are_kept_but_charset() -> None:
    body = MailBody(
        from_=sender(),
        subject="s",
        content=[Content("text/calendar; method=REQUEST; charset=latin-1", "BEGIN:VCALENDAR")],
    )
    msg = parse(render(body, Personalization(to=[sender()]), message_id="m", date=DATE).data)
    assert msg.get_content_type() == "text/calendar"
    assert msg.get_param("method") == "REQUEST" and msg.get_param("charset") == "utf-8"


def test_attachment_base64_is_normalized_to_76_character_lines() -> None:
    raw = bytes(range(256)) * 10
    messy = base64.b64encode(raw).decode()
    messy = "\n".join(messy[i : i + 50] for i in range(0, len(messy), 50))
    body = MailBody(
        from_=sender(),
        subject="s",
        content=[Content("text/plain", "x")],
        attachments=[Attachment(messy, "data.bin"), Attachment("aGk", "unpadded.txt")],
    )
    r = render(body, Personalization(to=[sender()]), message_id="m", date=DATE)
    part, unpadded = list(parse(r.data).iter_attachments())
    assert part.get_content() == raw and unpadded.get_content() == b"hi"
    lines = r.data.split(b"\r\n")
    assert sum(len(line) == 76 for line in lines) == len(raw) // 57


def test_no_from_address_is_an_error() -> None:
    with pytest.raises(RenderError):
        render(MailBody(subject="s"), Personalization(to=[sender()]), message_id="m", date=DATE)
