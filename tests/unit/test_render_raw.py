"""Unit tests of :mod:`postline.deliver.render_raw`: the stored bytes themselves when nothing
is per message; otherwise To replaced and X-SMTPAPI substitutions in SendGrid's order,
bounded in size."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import pytest

from postline.deliver.render_raw import render_raw
from postline.model.relay import RelayMessage

RECEIVED = b"Received: from c (unknown [127.0.0.1])\r\n\tby mx.test (Postline) with ESMTPA id Q\r\n"
RAW = (
    RECEIVED + b"From: Sender <s@x.example>\r\nTo: list@x.example,\r\n other@x.example\r\n"
    b"Subject: Hello -name-\r\nto: second@x.example\r\nMessage-ID: <m@x.example>\r\n\r\n"
    b"Dear -name-,\r\n:offer\r\n-name--name-\r\n"
)


def rm(**kw: Any) -> RelayMessage:
    return RelayMessage(mail_from="bounce@s.example", from_domain="x.example", **kw)


def test_nothing_per_message_is_the_stored_object() -> None:
    for m in (rm(), rm(sub={}, section={}, to_header=""), rm(categories=["c"], smtputf8=True)):
        out = render_raw(RAW, m, max_size=len(RAW))
        assert out.data is RAW
        assert out.mail_from == "bounce@s.example"
        assert out.sign_domain == "x.example"
        assert out.smtputf8 is m.smtputf8
        assert out.eight_bit is False
    assert render_raw(RAW, rm(eight_bit=True), max_size=len(RAW)).eight_bit is True


def test_nothing_per_message_over_the_limit() -> None:
    with pytest.raises(ValueError, match="over"):
        render_raw(RAW, rm(), max_size=len(RAW) - 1)


def test_to_replaces_every_to_field_at_the_first() -> None:
    out = render_raw(RAW, rm(to_header="Ana <ana@y.example>"), max_size=10_000).data
    assert out == RAW.replace(
        b"To: list@x.example,\r\n other@x.example\r\n", b"To: Ana <ana@y.example>\r\n"
    ).replace(b"to: second@x.example\r\n", b"")


def test_to_goes_after_the_received_when_there_was_none() -> None:
    raw = RECEIVED + b"From: s@x.example\r\n\r\nbody\r\n"
    out = render_raw(raw, rm(to_header="ana@y.example"), max_size=10_000).data
    assert out == RECEIVED + b"To: ana@y.example\r\nFrom: s@x.example\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("smtputf8", "field", "eight_bit"),
    [
        (False, b"To: =?utf-8?b?Sm9zw6k=?= <jose@y.example>\r\n", False),
        (True, "To: José <jose@y.example>\r\n".encode(), True),
    ],
)
def test_non_ascii_to(smtputf8: bool, field: bytes, eight_bit: bool) -> None:
    out = render_raw(RAW, rm(to_header="José <jose@y.example>", smtputf8=smtputf8), max_size=10**4)
    assert field in out.data
    assert out.eight_bit is eight_bit
    assert out.smtputf8 is smtputf8


def test_sub_in_header_and_body_in_one_pass() -> None:
    m = rm(sub={"-name-": "Ana -name- :offer", "-unused-": "x"})
    out = render_raw(RAW, m, max_size=10_000).data
    assert b"Subject: Hello Ana -name- :offer\r\n" in out  # a value is not searched again
    assert out.endswith(
        b"Dear Ana -name- :offer,\r\n:offer\r\nAna -name- :offerAna -name- :offer\r\n"
    )


def test_longest_tag_wins() -> None:
    raw = RECEIVED + b"\r\n-n- -name-\r\n"
    out = render_raw(raw, rm(sub={"-n-": "N", "-name-": "NAME"}), max_size=10_000).data
    assert out.endswith(b"\r\n\r\nN NAME\r\n")


def test_sendgrid_order_sub_then_section_then_sub() -> None:
    m = rm(
        sub={"-name-": "Ana", "-kind-": ":vip", "-price-": "9"},
        section={":vip": "Hi -name-,\nyour price is -price-.\r\nBye\r", ":offer": "unused"},
    )
    raw = RECEIVED + b"Subject: -kind- for -name-\r\n\r\n-kind-\r\n"
    out = render_raw(raw, m, max_size=10_000).data
    # the Subject gets the sub value only: sections are body text
    assert b"Subject: :vip for Ana\r\n" in out
    # sub brought in a section tag, the section brought in sub tags, its line ends are CRLF
    assert out.endswith(b"\r\n\r\nHi Ana,\r\nyour price is 9.\r\nBye\r\n\r\n")


def test_section_without_sub() -> None:
    raw = RECEIVED + b"\r\n:s and :s\r\n"
    out = render_raw(raw, rm(section={":s": "text"}), max_size=10_000)
    assert out.data == RECEIVED + b"\r\ntext and text\r\n"


def test_message_without_blank_line_gets_one() -> None:
    raw = RECEIVED + b"From: s@x.example"  # header fields only, no final CRLF
    out = render_raw(raw, rm(to_header="a@y.example"), max_size=10_000).data
    assert out == RECEIVED + b"To: a@y.example\r\nFrom: s@x.example\r\n\r\n"


def test_max_size_bounds_the_result() -> None:
    m = rm(sub={"-name-": "x" * 100})
    size = len(render_raw(RAW, m, max_size=10**6).data)
    assert len(render_raw(RAW, m, max_size=size).data) == size
    with pytest.raises(ValueError, match=f"larger than {size - 1:,} octets"):
        render_raw(RAW, m, max_size=size - 1)


def test_values_shorter_than_their_tags_are_counted_to_the_end() -> None:
    # the result passes the limit halfway through, and comes back under it
    raw = RECEIVED + b"\r\n-grow-" + b"-shrink-" * 10 + b"\r\n"
    m = rm(sub={"-grow-": "x" * 50, "-shrink-": ""})
    size = len(render_raw(raw, m, max_size=10**6).data)
    assert size == len(RECEIVED) + 2 + 50 + 2
    assert len(render_raw(raw, m, max_size=size).data) == size


def test_growth_is_refused_before_it_is_built() -> None:
    raw = RECEIVED + b"\r\n" + b"-n-" * 1_000_000  # 3 MB of tags
    with pytest.raises(ValueError):  # 1 GB if it were built; refused at the first 30 MB
        render_raw(raw, rm(sub={"-n-": "x" * 1000}), max_size=30 * 1024 * 1024)


def test_substitution_can_make_it_eight_bit() -> None:
    m = rm(sub={"-name-": "Zoë"})
    out = render_raw(RAW, m, max_size=10_000)
    assert "Dear Zoë".encode() in out.data and out.eight_bit is True
    m = rm(sub={"-unused-": "Zoë"})
    assert render_raw(RAW, m, max_size=10_000).eight_bit is False


def test_output_parses() -> None:
    m = rm(to_header='"Lopez, Ana" <ana@y.example>', sub={"-name-": "Ana"})
    out = render_raw(RAW, m, max_size=10_000).data
    msg = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(out)
    assert msg["To"] == '"Lopez, Ana" <ana@y.example>'
    assert msg["Subject"] == "Hello Ana"
    assert len(msg.get_all("To") or []) == 1
