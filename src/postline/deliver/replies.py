"""SMTP replies (RFC 5321 §4.2) and an incremental parser for them.

A reply is one or more lines ``CODE-text`` ... ``CODE text``; the enhanced status code
(RFC 3463, ``class.subject.detail``) leads the text when the server offers
ENHANCEDSTATUSCODES. The parser takes bytes as they arrive, split anywhere, and returns
complete replies; it is the only place that looks at reply syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postline.deliver.errors import ProtocolError

# RFC 3463 §2: class "." subject "." detail; the class must agree with the reply code.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")

# RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; real servers exceed it, so we only
# bound the buffer to stop a peer that never sends a line end.
MAX_LINE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...] = ("",)  # the text of each line, after "CODE-" / "CODE "
    enhanced: str = ""  # "5.1.1", or "" when the server sent none

    @classmethod
    def from_lines(cls, code: int, lines: tuple[str, ...]) -> Reply:
        m = _ENHANCED.match(lines[0])
        enhanced = m.group(0).rstrip() if m and int(m.group(1)) == code // 100 else ""
        return cls(code, lines, enhanced)

    @property
    def positive(self) -> bool:
        """2xx, or 3xx (an intermediate "go ahead", e.g. 354 to DATA)."""
        return self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def text(self) -> str:
        """The lines joined by spaces, without the enhanced status codes."""
        n = len(self.enhanced)
        if not n:
            return " ".join(self.lines)
        return " ".join(ln[n + 1 :] if ln.startswith(self.enhanced) else ln for ln in self.lines)

    def __str__(self) -> str:
        return f"{self.code} {' '.join(self.lines)}".rstrip()

    def encode(self) -> bytes:
        """The reply as a server writes it (used by the fake destination and tests)."""
        last = len(self.lines) - 1
        out = [f"{self.code}{' ' if i == last else '-'}{ln}\r\n" for i, ln in enumerate(self.lines)]
        return "".join(out).encode()


class ReplyParser:
    """Bytes in, complete :class:`Reply` values out; tolerant of bare LF line ends."""

    __slots__ = ("_buf", "_code", "_lines")

    def __init__(self) -> None:
        self._buf = b""
        self._code = 0  # code of the multi-line reply in progress, 0 when none
        self._lines: list[str] = []

    @property
    def partial(self) -> bool:
        """True while bytes of an incomplete reply are buffered."""
        return bool(self._buf or self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        buf = self._buf + data if self._buf else data
        replies: list[Reply] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            reply = self._line(buf[start:end])
            start = end + 1
            if reply is not None:
                replies.append(reply)
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE:
            raise ProtocolError(f"reply line longer than {MAX_LINE} bytes")
        return replies

    def _line(self, raw: bytes) -> Reply | None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        head, sep = raw[:3], raw[3:4]
        if not (head.isdigit() and b"2" <= head[:1] <= b"5" and sep in (b" ", b"-", b"")):
            raise ProtocolError(f"malformed reply line {raw[:80]!r}")
        code = int(head)
        if self._lines and code != self._code:
            raise ProtocolError(f"reply code changed from {self._code} to {code} mid-reply")
        self._code = code
        self._lines.append(raw[4:].decode("utf-8", "replace"))
        if sep == b"-":
            return None
        lines, self._lines = tuple(self._lines), []
        return Reply.from_lines(code, lines)


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper-cased) mapped to their parameters; the first line is the name."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions
