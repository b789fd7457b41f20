"""Per-message output of a message relayed over SMTP (model/relay.py): the stored bytes, with
this message's To header and X-SMTPAPI substitutions when it has any.

Most relayed messages have none, and are delivered as the very bytes object the spool gave
(a message can be 30 MB: no copy). Otherwise, in SendGrid's order:

1. each ``sub`` tag is replaced by this message's value, in the header section and the
   body, in one pass (a value is not searched again; longest tag first where two match);
2. each ``section`` tag is replaced by its text, in the body only, with the text's line
   ends made CRLF;
3. the ``sub`` tags once more, in the body, for those the sections brought in;
4. every To field is removed and one ``To: <to_header>`` put where the first was (after the
   first field, the Received the relay wrote, when there was none); RFC 2047 encoded-words
   when it is not ASCII and the message is not sent with SMTPUTF8 (RFC 6532 allows UTF-8
   only then).

Substitution can make a message much larger (a 10 KB value behind a 3-octet tag): the
growth is counted as the replacements are made and :class:`ValueError` raised as soon as
the result would pass ``max_size``, before it is built (the caller bounces the message).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from postline.accept.relay_headers import CRLF, field_name, header_end, split_fields
from postline.deliver.render import RenderedMessage
from postline.deliver.render_headers import address_field, unstructured
from postline.model.mail import mailbox_of
from postline.model.relay import RelayMessage

MAX_LINE = 998  # RFC 5322 §2.1.1
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def render_raw(raw: bytes, m: RelayMessage, *, max_size: int) -> RenderedMessage:
    """The message ``m`` of the stored relayed message ``raw``, ready for DATA; ValueError
    when it would be larger than ``max_size`` octets."""
    if not (m.to_header or m.sub or m.section):
        if len(raw) > max_size:
            raise ValueError(f"the message is {len(raw):,} octets, over {max_size:,}")
        return _rendered(raw, m, m.eight_bit)
    try:
        data = _personalized(raw, m, max_size)
    except _TooBig:
        raise ValueError(f"substitutions would make it larger than {max_size:,} octets") from None
    added = not (_all_ascii(m.sub) and _all_ascii(m.section) and (m.to_header or "").isascii())
    return _rendered(data, m, m.eight_bit or (added and not data.isascii()))


def _personalized(raw: bytes, m: RelayMessage, max_size: int) -> bytes:
    end, start = header_end(raw, final=True)
    sub = _Replacer(_encoded(m.sub))
    head = sub.apply(raw[:end], 0, max_size - 2)
    if head and not head.endswith(CRLF):  # a message of header fields only, no CRLF
        head += CRLF
    if m.to_header:
        head = _with_to(head, m.to_header, m.smtputf8)
    room = max_size - len(head) - 2
    body, at = sub.apply_from(raw, start, room)
    if m.section:
        sections = _Replacer(_encoded(m.section, _LINE_ENDS))
        body, at = sections.apply_from(body, at, room)
        body, at = sub.apply_from(body, at, room)
    return b"".join((head, CRLF, memoryview(body)[at:]))


def _rendered(data: bytes, m: RelayMessage, eight_bit: bool) -> RenderedMessage:
    return RenderedMessage(data, m.mail_from, m.smtputf8, eight_bit, sign_domain=m.from_domain)


class _TooBig(Exception):
    pass


def _check_size(size: int, room: int) -> None:
    if size > room:
        raise _TooBig


def _all_ascii(texts: Mapping[str, str] | None) -> bool:
    return all(t.isascii() for t in (texts or {}).values())


def _encoded(
    table: Mapping[str, str] | None, crlf: re.Pattern[bytes] | None = None
) -> dict[bytes, bytes]:
    """Tags and values as UTF-8 (an empty tag is no tag); ``crlf``: line ends made CRLF."""
    out: dict[bytes, bytes] = {}
    for tag, value in (table or {}).items():
        if tag:
            text = value.encode("utf-8", "surrogateescape")
            out[tag.encode("utf-8", "surrogateescape")] = crlf.sub(CRLF, text) if crlf else text
    return out


class _Replacer:
    """Tags → values (UTF-8), replaced in one pass; _TooBig as soon as the result must
    pass its room. The pieces are slices and shared values: the result is only built (one
    join) once its size is known to fit."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table
        self.ascii = all(v.isascii() for v in self.table.values())

    def apply(self, data: bytes, start: int, room: int) -> bytes:
        out, at = self.apply_from(data, start, room)
        return out[at:] if at else out

    def apply_from(self, data: bytes, start: int, room: int) -> tuple[bytes, int]:
        """``data[start:]`` with the tags replaced, as (bytes, offset where it starts): the
        input itself when no tag occurs."""
        tags = [t for t in self.table if data.find(t, start) >= 0]
        if not tags:
            _check_size(len(data) - start, room)
            return data, start
        tags.sort(key=len, reverse=True)
        pattern = re.compile(b"|".join(map(re.escape, tags)))
        pieces: list[bytes | memoryview] = []
        view, pos, size = memoryview(data), start, len(data) - start
        for match in pattern.finditer(data, start):
            value = self.table[match[0]]
            size += len(value) - len(match[0])
            if size - (len(data) - match.end()) > room:
                raise _TooBig  # even if all the rest vanished (values shorter than tags)
            pieces += (view[pos : match.start()], value)
            pos = match.end()
        _check_size(size, room)
        pieces.append(view[pos:])
        return b"".join(pieces), 0


def _with_to(head: bytes, to_header: str, smtputf8: bool) -> bytes:
    """Every To field out, this message's in place of the first (or after the Received)."""
    fields = split_fields(head)
    at = next((i for i, f in enumerate(fields) if field_name(f) == b"to"), min(1, len(fields)))
    kept = [f for f in fields if field_name(f) != b"to"]
    kept.insert(at, _to_field(to_header, smtputf8))
    return b"".join(kept)


def _to_field(value: str, smtputf8: bool) -> bytes:
    if (value.isascii() or smtputf8) and len(value.encode()) <= MAX_LINE - 4:
        return f"To: {value}\r\n".encode()
    mailbox = mailbox_of(value)
    field = address_field("To", [mailbox])[0] if mailbox else unstructured("To", value)
    return field.encode()
