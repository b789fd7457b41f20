"""Property tests of rendering: whatever the text, the stdlib parser reads back what was
meant, every line is CRLF-terminated and at most 998 octets, and no value can start a
header field of its own."""

from __future__ import annotations

import email
import email.header
import email.policy
import re
from email.message import EmailMessage

from hypothesis import example, given, settings
from hypothesis import strategies as st

from postline.deliver.render import render
from postline.model.mail import Attachment, Content, EmailAddress, MailBody, Personalization

DATE = 1_700_000_000.0
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"

local_parts = st.text(ATEXT + ".", min_size=1, max_size=30).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s
)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
domains = st.lists(labels, min_size=2, max_size=3).map(".".join)
emails = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)
names = st.none() | st.text(max_size=80)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def display_name(data: bytes, field: str) -> str:
    """The display name of the single address in ``field``, exactly as encoded.

    Decoded with the legacy ``decode_header``, which follows RFC 2047 §6.2. The modern
    parser is checked separately and more loosely (:func:`phrase`): through 3.13 it keeps
    the blank between two adjacent encoded-words in an address header
    (python/cpython#128110), and it turns every whitespace character (even U+001F) in a
    decoded phrase into one space.
    """
    raw = str(email.message_from_bytes(data, policy=email.policy.compat32)[field])
    raw = raw.replace("\r\n", "")
    if not raw.endswith(">"):
        return ""
    name = raw.rsplit(" <", 1)[0]
    if name.startswith('"'):
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return str(email.header.make_header(email.header.decode_header(name)))


def phrase(value: str) -> str:
    return " ".join(value.split())


def one_line(value: str) -> str:
    """What a header value is expected to read back as: line breaks became one space."""
    return re.sub(r"[\r\n]+", " ", value)


def check_wire(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    for line in data.split(b"\r\n")[:-1]:
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998


def message(subject: str, from_name: str | None, text: str, html: str | None) -> MailBody:
    contents = [Content("text/plain", text)]
    if html is not None:
        contents.append(Content("text/html", html))
    return MailBody(
        from_=EmailAddress("news@example.com", from_name), subject=subject, content=contents
    )


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=300), from_name=names, to_name=names, to_email=emails)
@example(subject="=?utf-8?q?not_encoded?=", from_name="=?x?=", to_name="", to_email="a@b.c")
@example(subject="  lead and trail  ", from_name=" ", to_name="\t", to_email="a@b.c")
@example(subject="x" * 1200, from_name="y " * 60, to_name='"q" \\ ,;<>', to_email="a@b.c")
def test_headers_round_trip(
    subject: str, from_name: str | None, to_name: str | None, to_email: str
) -> None:
    body = message(subject, from_name, "x", None)
    pers = Personalization(to=[EmailAddress(to_email, to_name)])
    data = render(body, pers, message_id="m@x", date=DATE).data
    check_wire(data)
    msg = parse(data)
    assert msg["Subject"] == one_line(subject)
    for field, name, addr in (("From", from_name, "news@example.com"), ("To", to_name, to_email)):
        expected = one_line(name or "").strip(" \t")
        assert display_name(data, field) == expected
        (address,) = msg[field].addresses
        assert phrase(address.display_name).replace(" ", "") == phrase(expected).replace(" ", "")
        assert address.addr_spec == addr


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=2000), html=st.none() | st.text(max_size=500))
@example(text="line\r\n.\r\nFrom x\n \t\n", html="=_A0000 --=_A00000000")
@example(text="ü" * 2000, html="")
def test_bodies_round_trip(text: str, html: str | None) -> None:
    data = render(message("s", None, text, html), Personalization(), message_id="m", date=DATE)
    check_wire(data.data)
    msg = parse(data.data)
    parts = [msg] if html is None else list(msg.iter_parts())
    expected = [text] if html is None else [text, html]
    assert len(parts) == len(expected)
    for part, value in zip(parts, expected, strict=True):
        content = part.get_content()
        assert content.replace("\r\n", "\n") == value.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(["X-A", "X-B", "List-Id", "Comments", "X-Long-" + "n" * 60]),
        st.text(max_size=200),
        max_size=5,
    ),
    filename=st.text(min_size=1, max_size=120),
    content=st.binary(max_size=300),
)
@example(
    values={"X-A": "v\r\nBcc: evil@example.com\r\n\r\nbody"},
    filename='a"b\\c\r\nContent-Type: text/evil',
    content=b"",
)
def test_no_header_injection(values: dict[str, str], filename: str, content: bytes) -> None:
    import base64

    body = MailBody(
        from_=EmailAddress("news@example.com", "N\r\nBcc: x@example.com"),
        subject="s\r\nBcc: x@example.com",
        content=[Content("text/plain", "hello")],
        headers=values,
        attachments=[Attachment(base64.b64encode(content).decode(), filename)],
    )
    data = render(body, Personalization(to=[EmailAddress("a@b.c")]), message_id="m", date=DATE)
    check_wire(data.data)
    msg = parse(data.data)
    expected = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", *values]
    assert list(msg.keys()) == [*expected, "Content-Type"]
    for name, value in values.items():
        assert msg[name] == one_line(value)
    (attachment,) = msg.iter_attachments()
    assert attachment.get_filename() == one_line(filename).strip()  # get_filename() strips
    assert attachment.get_content() == content
    assert list(attachment.keys()) == [
        "Content-Type",
        "Content-Disposition",
        "Content-Transfer-Encoding",
    ]
