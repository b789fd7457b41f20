"""Dot-stuffing and line-end normalization (RFC 5321 §4.5.2) as properties."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from postline.deliver.errors import LineTooLong
from postline.deliver.smtp_protocol import decode_data, encode_data, normalize_newlines

pytestmark = pytest.mark.timeout(60)

# Bodies built from the bytes that matter: dots, CR, LF, and something else.
bodies = st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"x", b" ", b"\xc3\xa9"]))


def expected(data: bytes) -> bytes:
    """What the receiver must get: CRLF line ends, and a final CRLF."""
    norm = normalize_newlines(data)
    return norm if not norm or norm.endswith(b"\r\n") else norm + b"\r\n"


@given(bodies.map(b"".join))
@example(b".")
@example(b".\r\n")
@example(b"\r\n.\r\n")
@example(b"..\n.\n")
@example(b"")
@settings(max_examples=500, deadline=None)
def test_stuff_then_unstuff_round_trips(data: bytes) -> None:
    assert decode_data(encode_data(data)) == expected(data)


@given(bodies.map(b"".join))
@settings(max_examples=500, deadline=None)
def test_wire_form_is_well_formed(data: bytes) -> None:
    wire = encode_data(data)
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")
    content = wire[:-3]  # without the terminator line "."
    assert content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")
    for line in content.split(b"\r\n"):
        assert not line.startswith(b".") or line.startswith(b".."), line
    # the terminator appears only at the end
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3


def test_normalization_examples() -> None:
    assert normalize_newlines(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"
    assert normalize_newlines(b"\r\r\n\n") == b"\r\n\r\n\r\n"
    same = b"a\r\nb\r\n"
    assert normalize_newlines(same) is same  # the common case copies nothing


def test_line_length_limit() -> None:
    assert encode_data(b"x" * 998) == b"x" * 998 + b"\r\n.\r\n"
    with pytest.raises(LineTooLong):
        encode_data(b"ok\r\n" + b"x" * 999 + b"\r\nok\r\n")
    with pytest.raises(LineTooLong):
        encode_data(b"x" * 999)


def test_thirty_megabytes_are_stuffed_whole() -> None:
    # A base64 attachment of 30 MB with a dot at the start of every 1000th line.
    # (Its speed, ~0.2 s, is measured by bench/smtp_client.py, not asserted here.)
    line = b"QUJD" * 19 + b"\r\n"
    body = (line * 999 + b"." + line) * (30_000_000 // (len(line) * 1000))
    wire = encode_data(body)
    assert len(wire) == len(body) + body.count(b"\r\n.") + 3
    assert decode_data(wire) == body
