"""Command-line framing: complete lines out of the bytes read, with the length limits.

RFC 5321 §4.5.3.1.4 limits a command line to 512 octets with its CRLF; AUTH lines may
be longer (RFC 4954 §4: 12288). A line that cannot end within its limit is refused as
soon as the limit is passed and then skipped up to its LF, so nothing beyond the limit
is ever buffered. Every line must end in CRLF, and no CR may stand alone inside it
(the command side of the bare-newline rule in :mod:`postline.smtp.data`).
"""

from __future__ import annotations

from postline.smtp import replies as r


class LineReader:
    def __init__(self, max_line: int, max_auth_line: int) -> None:
        self.buf = bytearray()  # also holds data pipelined behind a command that pauses
        self._max_line = max_line
        self._max_auth_line = max_auth_line
        self._skipping = False  # discarding the rest of an over-long line

    def clear(self) -> None:
        self.buf.clear()
        self._skipping = False

    def take(self) -> bytes:
        """Everything buffered (what followed DATA goes to the data reader)."""
        data = bytes(self.buf)
        self.clear()
        return data

    def next_line(self, sasl_response: bool) -> str | bytes | None:
        """The next line without its CRLF, or the reply refusing it (``str``), or None
        when no complete line is buffered yet."""
        while True:
            limit = self._limit(sasl_response)
            nl = self.buf.find(b"\n", 0, limit)
            refusal = None
            if nl < 0:
                if len(self.buf) < limit:
                    return None
                nl = self.buf.find(b"\n", limit)
                if not self._skipping:
                    refusal = r.S500_LINE_TOO_LONG
                if nl < 0:  # skip what came so far; keep a possible CR of the CRLF
                    self._skipping = True
                    del self.buf[:-1]
                    return refusal
                self._skipping = True  # the line ends at nl: dropped below
            line = bytes(self.buf[: nl + 1])
            del self.buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                if refusal:
                    return refusal
                continue
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                return r.S500_BARE_NEWLINE
            return line[:-2]

    def _limit(self, sasl_response: bool) -> int:
        if sasl_response or self.buf[:5].upper() == b"AUTH ":
            return self._max_auth_line
        return self._max_line
