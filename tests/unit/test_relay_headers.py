"""Unit tests of :mod:`postline.accept.relay_headers`: where the header section ends, what
the relay changes in it (and nothing else), and the Received field."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from postline.accept.relay_headers import (
    HeaderError,
    HeaderInfo,
    field_name,
    field_value,
    header_end,
    prepare_headers,
    protocol_name,
    received_field,
    split_fields,
)
from postline.accept.smtpapi import parse_smtpapi

RECEIVED = (
    b"Received: from c (unknown [127.0.0.1])\r\n"
    b"\tby mx.test (Postline) with ESMTPA id Q;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
)
MID = "<q.0@mx.test>"
DATE = "Tue, 14 Nov 2023 22:13:20 +0000"


def prepare(section: bytes, sender: str = "env@s.example") -> tuple[bytes, HeaderInfo]:
    return prepare_headers(
        section, received=RECEIVED, envelope_sender=sender, message_id=MID, date=DATE
    )


# -- header_end ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "partial", "whole"),
    [
        (b"A: b\r\n\r\nbody", (6, 8), (6, 8)),
        (b"A: b\r\nbody\r\n", (6, 6), (6, 6)),  # no blank line: the body starts at "body"
        (b"A: b\r\n", None, (6, 6)),
        (b"A: b", None, (4, 4)),  # a header-only message without its last CRLF
        (b"", None, (0, 0)),
        (b"\r\nbody", (0, 2), (0, 2)),  # no header at all
        (b" folded\r\n", (0, 0), (0, 0)),  # a continuation line needs a field before it
        (b"A: b\r\n c\r\n\tc\r\n\r\n", (14, 16), (14, 16)),  # folded field
        (b"Subject : obs\r\n\r\n", (15, 17), (15, 17)),  # RFC 5322 §4.5: blanks before ':'
        (b"A: b\r\n: no name\r\n", (6, 6), (6, 6)),
        (b"A: b\r\nno colon\r\n", (6, 6), (6, 6)),
        (b"A: b\r\nno", None, (6, 6)),  # "no" may still become "no: x"
        (b"A: b\r\nno c", (6, 6), (6, 6)),  # a blank then a letter: never a field name
        (b"A: b\r\n\r", None, (6, 6)),  # perhaps the empty line
        (b"A: b\r\nX\r", (6, 6), (6, 6)),  # "X" then CR: no colon can follow
        (b"A: b\r\n\xc3\xa9: x\r\n", (6, 6), (6, 6)),  # field names are ASCII
        (b"A: b\r\nC: \xc3\xa9\r\n\r\n", (13, 15), (13, 15)),  # values need not be
        (b"A: b\nC: d\r\n\r\n", (11, 13), (11, 13)),  # a bare LF is inside a line
    ],
)
def test_header_end(buf: bytes, partial: tuple[int, int] | None, whole: tuple[int, int]) -> None:
    assert header_end(buf, final=False) == partial
    assert header_end(buf, final=True) == whole


def test_header_end_waits_inside_a_long_field() -> None:
    start = b"A: b\r\nSubject: " + b"x" * 10_000
    assert header_end(start, final=False) is None
    assert header_end(start + b"\r\n\r\n", final=False) == (len(start) + 2, len(start) + 4)


# -- fields ----------------------------------------------------------------------------------


def test_split_fields_keeps_every_byte() -> None:
    section = b" lead\r\nA: b\r\n c\r\nX-SMTPAPI : {}\r\nbad line\r\nD:e"
    fields = split_fields(section)
    assert fields == [
        b" lead\r\n",
        b"A: b\r\n c\r\n",
        b"X-SMTPAPI : {}\r\n",
        b"bad line\r\n",
        b"D:e",
    ]
    assert [field_name(f) for f in fields] == [b"", b"a", b"x-smtpapi", b"", b"d"]
    assert field_value(fields[1]) == b"b c"


# -- prepare_headers -------------------------------------------------------------------------


def test_received_first_originals_in_order_additions_at_the_end() -> None:
    section = b"Subject: hi\r\nFrom: Ana <ana@x.example>\r\nX-Mailer: m\r\n"
    new, info = prepare(section)
    assert new == RECEIVED + section + f"Message-ID: {MID}\r\nDate: {DATE}\r\n".encode()
    assert info.message_id == MID
    assert info.from_addr == "ana@x.example"
    assert info.from_domain == "x.example"
    assert info.subject == "hi"
    assert info.smtpapi is None
    assert info.eight_bit is False


def test_existing_message_id_and_date_are_kept_byte_for_byte() -> None:
    section = (
        b"message-id:   <own@x.example>  \r\ndate: Tue, 14 Nov 2023 22:13:20 +0100\r\n"
        b"From: a@x.example\r\n"
    )
    new, info = prepare(section)
    assert new == RECEIVED + section
    assert info.message_id == "<own@x.example>"


def test_an_empty_message_id_is_replaced() -> None:
    new, info = prepare(b"Message-ID:  \r\nFrom: a@x.example\r\nDate: d\r\n")
    assert new == RECEIVED + f"From: a@x.example\r\nDate: d\r\nMessage-ID: {MID}\r\n".encode()
    assert info.message_id == MID


def test_missing_from_is_the_envelope_sender() -> None:
    new, info = prepare(b"Subject: s\r\n", sender="bob@bücher.example")
    assert new.endswith(b"From: bob@xn--bcher-kva.example\r\n")
    assert info.from_addr == "bob@bücher.example"
    assert info.from_domain == "xn--bcher-kva.example"


def test_missing_from_and_null_sender_is_refused() -> None:
    with pytest.raises(HeaderError) as err:
        prepare(b"Subject: s\r\n", sender="")
    assert err.value.reply.startswith("550 5.6.0 ")
    assert "From" in err.value.reply and "MAIL FROM:<>" in err.value.reply
    assert err.value.reply.isascii() and len(err.value.reply) <= 510


def test_null_sender_with_a_from_is_fine() -> None:
    _, info = prepare(b"From: a@x.example\r\n", sender="")
    assert info.from_addr == "a@x.example"


@pytest.mark.parametrize(
    ("value", "addr", "domain"),
    [
        (b"undisclosed:;", None, ""),
        (b"", None, ""),
        (b"no address here", None, ""),
        (b"=?utf-8?q?Ana_L=C3=B3pez?= <ana@x.example>, b@y.example", "ana@x.example", "x.example"),
        (
            b'"L\xc3\xb3pez, Ana" <ana@B\xc3\xbccher.Example>',
            "ana@Bücher.Example",
            "xn--bcher-kva.example",
        ),
        (b"ana@\xff.example", "ana@\ufffd.example", ""),  # not UTF-8, no A-label: no domain
    ],
)
def test_from_that_cannot_be_parsed_is_not_an_error(
    value: bytes, addr: str | None, domain: str
) -> None:
    new, info = prepare(b"From: " + value + b"\r\n")
    assert info.from_addr == addr
    assert info.from_domain == domain
    assert b"\r\nFrom: " + value + b"\r\n" in new  # kept; no second From added
    assert new.count(b"From:") == 1


def test_first_x_smtpapi_wins_and_all_are_removed() -> None:
    section = (
        b'X-SMTPAPI: {"category":\r\n "first"}\r\nSubject: s\r\n'
        b'x-smtpapi: {"category": "second"}\r\n'
        b"From: a@x.example\r\nX-SmtpApi : {}\r\n"
    )
    new, info = prepare(section)
    assert b"smtpapi" not in new.lower()
    assert info.smtpapi == '{"category": "first"}'
    assert parse_smtpapi(info.smtpapi, now=0).categories == ["first"]


def test_folded_x_smtpapi_is_unfolded() -> None:
    folded = (
        b'X-SMTPAPI: {"to": ["a@x.example",\r\n "b@y.example"],\r\n'
        b'\t"sub": {"-n-":\r\n ["A", "B"]}}\r\n'
    )
    _, info = prepare(folded + b"From: f@x.example\r\n")
    api = parse_smtpapi(info.smtpapi or "", now=0)
    assert api.to == [("a@x.example", "a@x.example"), ("b@y.example", "b@y.example")]
    assert api.sub == {"-n-": ["A", "B"]}


def test_x_smtpapi_not_utf8_is_refused() -> None:
    with pytest.raises(HeaderError) as err:
        prepare(b'From: a@x.example\r\nX-SMTPAPI: {"category": "caf\xe9"}\r\n')
    reply = err.value.reply
    assert reply.startswith("550 5.6.0 X-SMTPAPI: ") and "UTF-8" in reply
    assert reply.isascii() and "\r" not in reply and len(reply) <= 510


def test_x_smtpapi_in_utf8_is_decoded() -> None:
    _, info = prepare('From: a@x.example\r\nX-SMTPAPI: {"unique_args": {"a": "é"}}\r\n'.encode())
    assert info.smtpapi == '{"unique_args": {"a": "é"}}'


def test_last_line_without_crlf_gets_one() -> None:
    new, _ = prepare(b"From: a@x.example\r\nSubject: s")
    assert new == RECEIVED + b"From: a@x.example\r\nSubject: s\r\n" + (
        f"Message-ID: {MID}\r\nDate: {DATE}\r\n".encode()
    )


def test_eight_bit_header() -> None:
    _, info = prepare("From: a@x.example\r\nSubject: café\r\n".encode())
    assert info.eight_bit is True
    assert info.subject == "café"


def test_result_parses_as_a_message() -> None:
    new, _ = prepare(b"Subject: s\r\nTo: b@y.example\r\n")
    msg = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(new + b"\r\nbody\r\n")
    assert msg["From"] == "env@s.example"
    assert msg["Message-ID"] == MID
    assert msg["Date"] == DATE
    assert msg.get_all("Received") is not None


# -- Received --------------------------------------------------------------------------------


def received(**kw: object) -> bytes:
    args: dict[str, object] = {
        "helo": "client.example",
        "client_ip": "192.0.2.1",
        "client_host": "client.example",
        "hostname": "mx.test",
        "protocol": "ESMTPSA",
        "queue_id": "Q1",
        "recipient": "b@y.example",
        "when": 1_700_000_000.0,
    }
    args.update(kw)
    return received_field(**args)  # type: ignore[arg-type]


def test_received_like_postfix() -> None:
    assert received() == (
        b"Received: from client.example (client.example [192.0.2.1])\r\n"
        b"\tby mx.test (Postline) with ESMTPSA id Q1\r\n"
        b"\tfor <b@y.example>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    )


def test_received_without_one_recipient_host_or_helo() -> None:
    assert received(recipient=None, client_host=None, helo="", client_ip="2001:db8::1") == (
        b"Received: from unknown (unknown [IPv6:2001:db8::1])\r\n"
        b"\tby mx.test (Postline) with ESMTPSA id Q1;\r\n"
        b"\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
    )


@pytest.mark.parametrize(
    "helo",
    [
        "evil\r\nX-Injected: yes",
        "evil\nX-Injected: yes",
        "a (b [1.2.3.4])\r\n\r\nbody",
        "x" * 5000,
        "ünïcode\x00\x7f",
    ],
)
def test_received_helo_cannot_inject(helo: str) -> None:
    field = received(helo=helo, recipient="b@y.example\r\nX-Injected: 1", client_host=helo)
    lines = field.split(b"\r\n")
    assert len(lines) == 4 and lines[-1] == b""
    assert all(len(line) <= 998 for line in lines)
    assert b"\n" not in field.replace(b"\r\n", b"") and b"\r" not in field.replace(b"\r\n", b"")
    assert not any(line.startswith((b"X-", b"body")) for line in lines)
    assert lines[1].startswith(b"\tby ") and lines[2].startswith(b"\t")


def test_received_long_recipient_leaves_out_for() -> None:
    field = received(recipient="a" * 600 + "@y.example")
    assert b"for <" not in field and b"Q1;\r\n\t" in field


def test_received_protocol_names() -> None:
    with pytest.raises(ValueError, match="protocol"):
        received(protocol="ESMTPX")
    assert protocol_name(esmtp=False, tls=True, auth=True) == "SMTP"
    assert protocol_name(esmtp=True, tls=False, auth=False) == "ESMTP"
    assert protocol_name(esmtp=True, tls=True, auth=False) == "ESMTPS"
    assert protocol_name(esmtp=True, tls=False, auth=True) == "ESMTPA"
    assert protocol_name(esmtp=True, tls=True, auth=True) == "ESMTPSA"
    assert protocol_name(esmtp=True, tls=True, auth=True, smtputf8=True) == "UTF8SMTPSA"
    for tls in (False, True):
        for auth in (False, True):
            received(protocol=protocol_name(esmtp=True, tls=tls, auth=auth))
