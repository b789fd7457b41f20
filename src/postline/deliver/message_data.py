"""A message in its wire form after DATA (RFC 5321 §4.5.2), and back.

One job: turn the octets of a message into what the SMTP client sends after the 354
reply: CRLF line ends (a bare CR or LF becomes CRLF), no line over 998 octets
(:class:`~postline.deliver.errors.LineTooLong`; folding belongs to the renderer), a dot
doubled at the start of a line, and the ``CRLF "." CRLF`` terminator. A small body is
prepared whole (:func:`prepare`, :func:`encode_data`); a large one is measured
(:func:`measure_data`) and then encoded chunk by chunk (:func:`stuffed_chunks`,
:func:`terminator`) so that it is never copied whole. Pure functions over bytes: when to
send which is decided by :class:`~postline.deliver.smtp_protocol.ClientProtocol`.
:func:`decode_data` is the receiving side's inverse, for tests and fakes.
"""

from __future__ import annotations

from collections.abc import Iterator

from postline.deliver.errors import LineTooLong

MAX_LINE = 998  # octets per line without CRLF, RFC 5321 §4.5.3.1.6

# Bodies up to STREAM_ABOVE octets go as one bytes object in one write (the hot path:
# rendered mail is a few KB). Larger ones (relayed mail of up to 30 MB is delivered as
# received) are stuffed and written BODY_CHUNK octets of input at a time as the transport
# drains, so the send path holds the caller's bytes plus about two chunks, not three
# copies (78 MiB of Python allocations for a 28.6 MiB body before; under 1 MiB now,
# tests/integration/test_smtp_client_large.py). A chunk is large enough that the per-write
# overhead is noise and small enough that the transient copies stay well under a MiB.
STREAM_ABOVE = 1 << 20
BODY_CHUNK = 256 << 10

_CR, _LF, _DOT = 13, 10, 46


def normalize_newlines(data: bytes) -> bytes:
    """Every bare LF and bare CR becomes CRLF. Counting first keeps the common case a no-op."""
    crlf = data.count(b"\r\n")  # as in _crlf_only, inlined: this runs for every message
    if crlf == data.count(b"\n") and crlf == data.count(b"\r"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _crlf_only(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return crlf == data.count(b"\n") and crlf == data.count(b"\r")


def longest_line(data: bytes) -> int:
    """Length of the longest CRLF-separated line; 46 ms for 30 MB, all in C."""
    if len(data) <= MAX_LINE:
        return len(data)
    return max(map(len, data.split(b"\r\n")))


def encode_data(data: bytes) -> bytes:
    """The message as sent after DATA: CRLF line ends, dot-stuffed, with the terminator.

    Dot-stuffing is one ``bytes.replace`` on ``CRLF "."`` plus a check of the first line,
    so it runs at memory speed for a 30 MB body. Raises :class:`LineTooLong` for a line
    over 998 characters: folding belongs to the renderer.
    """
    return prepare(data)[0]


def prepare(data: bytes) -> tuple[bytes, int]:
    """The wire form and the size for MAIL's SIZE= (RFC 1870 §3: CRLFs in, stuffing out)."""
    data = normalize_newlines(data)
    if longest_line(data) > MAX_LINE:
        raise LineTooLong(f"message has a line longer than {MAX_LINE} characters")
    if not data:
        return b".\r\n", 0
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed.endswith(b"\r\n"):
        return stuffed + b".\r\n", len(data)
    return stuffed + b"\r\n.\r\n", len(data) + 2  # the last line gets its CRLF


def _cuts(data: bytes, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of about ``chunk_size`` octets.

    A chunk never ends between the CR and the LF of a CRLF, so each one normalizes and
    stuffs on its own; only the first octet needs its predecessor (is it a line start?).
    """
    start, n = 0, len(data)
    while start < n:
        end = min(start + chunk_size, n)
        if end < n and data[end - 1] == _CR and data[end] == _LF:
            end += 1
        yield start, end
        start = end


def measure_data(data: bytes, chunk_size: int = BODY_CHUNK) -> int:
    """What :func:`prepare` returns as the size, computed chunk by chunk (no full copy).

    Raises :class:`LineTooLong` like :func:`encode_data`.
    """
    size = carry = 0  # carry: the length so far of the line the next chunk continues
    for start, end in _cuts(data, chunk_size):
        piece = normalize_newlines(data[start:end])
        size += len(piece)
        lengths = list(map(len, piece.split(b"\r\n")))
        lengths[0] += carry
        if max(lengths) > MAX_LINE:
            raise LineTooLong(f"message has a line longer than {MAX_LINE} characters")
        carry = lengths[-1]
    return size + 2 if carry else size


def encode_data_chunks(data: bytes, chunk_size: int = BODY_CHUNK) -> Iterator[bytes | memoryview]:
    """:func:`encode_data` in pieces, each made from about ``chunk_size`` octets of ``data``.

    Joined, the pieces are ``encode_data(data)``; line lengths are not checked here
    (:func:`measure_data` does, before MAIL). A chunk with nothing to stuff or normalize
    is a memoryview of ``data``: no copy at all.
    """
    yield from stuffed_chunks(data, chunk_size)
    yield terminator(data)


def stuffed_chunks(data: bytes, chunk_size: int) -> Iterator[bytes | memoryview]:
    """:func:`encode_data_chunks` without the terminator (:func:`terminator` gives it)."""
    view, plain = memoryview(data), _crlf_only(data)
    for start, end in _cuts(data, chunk_size):
        piece: bytes | memoryview
        if plain and data.find(b"\r\n.", start, end) < 0:
            piece = view[start:end]
        else:
            piece = normalize_newlines(data[start:end]).replace(b"\r\n.", b"\r\n..")
        if data[start] == _DOT and (start == 0 or data[start - 1] in (_CR, _LF)):
            piece = b"." + piece  # a line starting with "." begins this chunk
        yield piece


def terminator(data: bytes) -> bytes:
    """What ends ``data`` on the wire: ``"." CRLF``, after a CRLF if its last line has none."""
    if not data or data[-1] in (_CR, _LF):
        return b".\r\n"
    return b"\r\n.\r\n"  # the last line gets its CRLF


def decode_data(wire: bytes) -> bytes:
    """The inverse of :func:`encode_data` (what a server does): un-stuff, drop the terminator.

    ``wire`` is everything after the 354 reply up to and including ``CRLF "." CRLF`` (or a
    lone ``"." CRLF`` for an empty message).
    """
    if not wire.endswith(b".\r\n"):
        raise ValueError("data does not end with the <CRLF>.<CRLF> terminator")
    body = (b"\r\n" + wire[:-3]).replace(b"\r\n..", b"\r\n.")
    return body[2:]
