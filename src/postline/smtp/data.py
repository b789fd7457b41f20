"""The DATA stream (RFC 5321 §4.1.1.4, §4.5.2): find the end, un-stuff dots, refuse bad input.

The end of data is only ``CRLF "." CRLF`` (the first line counts as following a CRLF).
Any CR or LF that is not part of a CRLF pair refuses the whole message: that is what
makes the SMTP smuggling probes (``LF "." CRLF``, ``CR "." CRLF``, ``CRLF "." LF``,
published December 2023) harmless here — they can neither end the data early nor start a
second transaction, because the data only ends at a true CRLF.CRLF and then the message
containing them is refused. Postfix's ``smtpd_forbid_bare_newline = yes`` is the
reference; unlike Postfix (521 and disconnect) we refuse only the message (554) and keep
the session, since nothing in it was misread.

Strategy: each chunk is scanned with ``bytes.find``/``count``/``replace`` (all in C), so
a 30 MB message costs a few passes at memory speed. Only a tail of at most four bytes
that could begin a terminator (``CR``, ``CRLF``, ``CRLF.``, ``CRLF.CR``) is held back
between chunks; nothing else is buffered, and nothing beyond the size limit is returned.
"""

from __future__ import annotations

import enum

_END = b"\r\n.\r\n"
_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")  # longest first


class Refusal(enum.Enum):
    TOO_BIG = "too big"
    BARE_NEWLINE = "bare newline"


class DataReader:
    """One message's data, fed in pieces. ``feed`` returns the un-stuffed content it can
    release and, once the terminator is seen, the bytes that followed it (commands)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0  # un-stuffed octets released so far
        self._bare = False  # a bare CR or LF was seen: refused whatever else happens
        self._too_big = False
        self._tail = b"\r\n"  # virtual: the data starts at the beginning of a line
        self._virtual = True  # the first two octets of the tail were never received

    @property
    def refused(self) -> Refusal | None:
        """Why the message is refused. A bare newline wins over the size, wherever each
        occurs, so the verdict does not depend on how the data was split into reads."""
        if self._bare:
            return Refusal.BARE_NEWLINE
        return Refusal.TOO_BIG if self._too_big else None

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """(content to release, rest after the terminator or None while not finished)."""
        buf = self._tail + data
        end = buf.find(_END)
        if end >= 0:
            body, rest = buf[: end + 2], buf[end + 5 :]  # the CRLF ending the last line stays
            self._tail = b""
        else:
            keep = _held_back(buf)
            body, rest = buf[: len(buf) - keep], None
            self._tail = buf[len(buf) - keep :]
        return self._release(body), rest

    def _release(self, body: bytes) -> bytes:
        if not body:
            return b""
        if not self._bare and not _clean(body):
            self._bare = True
        out = body.replace(b"\r\n.", b"\r\n")  # dot-unstuffing: a leading "." is dropped
        if self._virtual:
            out, self._virtual = out[2:], False
        if self._bare or self._too_big:
            return b""
        if self.size + len(out) > self.max_size:
            self._too_big = True
            return b""
        self.size += len(out)
        return out


def _held_back(buf: bytes) -> int:
    """How many final octets might start the terminator (or the LF of a CRLF)."""
    for prefix in _PREFIXES:
        if buf.endswith(prefix):
            return len(prefix)
    return 0


def _clean(body: bytes) -> bool:
    """Every CR and every LF belongs to a CRLF pair."""
    pairs = body.count(b"\r\n")
    return body.count(b"\r") == pairs and body.count(b"\n") == pairs
