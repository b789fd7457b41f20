"""Dot-stuffing and line-end normalization (RFC 5321 §4.5.2) as properties."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from postline.deliver.errors import LineTooLong
from postline.deliver.message_data import (
    decode_data,
    encode_data,
    encode_data_chunks,
    measure_data,
    normalize_newlines,
)
from postline.deliver.message_data import prepare as _prepare

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


# Lines of CRLF-ended text where dots start many lines, and bodies that may end mid-line.
crlf_lines = st.lists(
    st.builds(
        bytes.__add__,
        st.sampled_from([b"", b".", b"..", b".x", b"x.", b"x", b"\xc3\xa9"]),
        st.sampled_from([b"\r\n", b"\r\n", b""]),
    )
).map(b"".join)
chunk_sizes = st.integers(min_value=1, max_value=40)


@given(crlf_lines, chunk_sizes)
@example(b".\r\n.\r\n", 3)  # a "." line begins the second chunk
@example(b"ab\r\n.\r\n", 3)  # the chunk would end between CR and LF
@example(b".", 1)
@example(b"", 5)
@settings(max_examples=1000, deadline=None)
def test_chunked_stuffing_is_the_one_shot_stuffing(data: bytes, chunk_size: int) -> None:
    assert b"".join(encode_data_chunks(data, chunk_size)) == encode_data(data)


@given(bodies.map(b"".join), chunk_sizes)
@settings(max_examples=1000, deadline=None)
def test_chunked_stuffing_normalizes_line_ends_too(data: bytes, chunk_size: int) -> None:
    assert b"".join(encode_data_chunks(data, chunk_size)) == encode_data(data)


@given(
    st.lists(st.sampled_from([b"x" * 500, b"x" * 499, b".", b"\r\n", b"\n", b"\r"])).map(b"".join),
    st.integers(min_value=1, max_value=2000),
)
@example(b"x" * 999, 500)
@example(b"x" * 998 + b"\r\n", 999)
@example(b"x" * 499 + b"\r" + b"x" * 499, 500)  # a bare CR ends a line at a chunk's end
@settings(max_examples=1000, deadline=None)
def test_measure_is_the_size_and_line_check_of_the_one_shot(data: bytes, chunk_size: int) -> None:
    try:
        size = _prepare(data)[1]
    except LineTooLong:
        with pytest.raises(LineTooLong):
            measure_data(data, chunk_size)
    else:
        assert measure_data(data, chunk_size) == size


def test_chunks_are_views_of_the_data_when_nothing_changes() -> None:
    data = b"line\r\n" * 1000 + b".dot\r\n" + b"line\r\n" * 1000
    pieces = list(encode_data_chunks(data, 4096))
    assert isinstance(pieces[0], memoryview) and isinstance(pieces[-2], memoryview)
    assert isinstance(pieces[1], bytes)  # the chunk with the dot line is stuffed: a copy
    assert pieces[-1] == b".\r\n"
    assert sum(map(len, pieces)) == len(data) + 1 + 3


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
    assert b"".join(encode_data_chunks(body)) == wire
    assert measure_data(body) == len(body)
