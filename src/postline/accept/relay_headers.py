"""The header section of a message received over SMTP: where it ends, and what the relay
changes in it before it is stored (accept/relay.py).

A relayed message is stored and delivered as it came (model/relay.py); only its header
section is touched, and only as a submission server does it:

* a ``Received`` field goes first (RFC 5321 §4.4), built by :func:`received_field` in
  Postfix's shape (``smtpd``: ``from helo (host [ip]) by hostname (Postline) with ESMTPSA
  id ID for <rcpt>; date``) with the protocol names of RFC 3848;
* every ``X-SMTPAPI`` field is removed (SendGrid's instructions must never reach a
  recipient); the first one is the one that counts, as at SendGrid;
* ``Message-ID``, ``Date`` and ``From`` are added when missing, at the end of the section.

The last point follows Postfix's cleanup(8) (man page: "Insert missing message headers:
(Resent-) From:, To:, Message-Id:, and Date:", enabled by ``local_header_rewrite_clients``
and ``always_add_missing_headers``; code: ``cleanup_message.c``,
``cleanup_header_done_callback``). postconf(5): since Postfix 2.6 the headers are added
only for clients that match ``local_header_rewrite_clients`` (a submission service sets
it to ``permit_sasl_authenticated, permit_mynetworks``; the relay only takes mail from
authenticated clients and ``trusted_networks``, so always here) or with
``always_add_missing_headers = yes``, because adding them "may break DKIM signatures that
cover non-existent headers". cleanup appends, after the last field, ``Message-Id:
<queueid@myhostname>``, ``Date:`` (the arrival time) and ``From:`` (the envelope sender,
local part quoted) for those missing. Differences, on purpose:

* a null envelope sender with no From is refused (550 5.6.0) instead of getting
  ``From: MAILER-DAEMON``: a relay client sending a message without an author is a bug in
  the client, and a bounce-looking From would hide it;
* the ``Resent-`` variants are not considered: Postfix adds ``Resent-Message-Id`` /
  ``Resent-Date`` / ``Resent-From`` instead when a ``Resent-`` field is present; here the
  plain fields are what the events (smtp-id) and DKIM use;
* a ``Message-ID`` field with an empty value is replaced by the generated one (Postfix
  keeps it): a message has at most one Message-ID (RFC 5322 §3.6) and a useful one.

No To is added: Postfix's ``undisclosed_recipients_header`` is empty by default since
Postfix 2.8 (postconf(5)). Header lines are recognized as Postfix's
``is_header()`` does: a name of printable ASCII without ``:``, optional blanks (RFC 5322
§4.5 obsolete syntax), then ``:``.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from typing import Literal, overload

from postline.accept.smtpapi_reply import C550_CONTENT, DOCS, smtp_reply
from postline.deliver.render_headers import addr_spec, format_date
from postline.model.domain import a_label

CRLF = b"\r\n"
_WSP = b" \t"
_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # ftext, obsolete blanks, colon
_NAME_SO_FAR = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*")  # a line that may still be one

NO_AUTHOR = (
    "Message refused: it has no From header and the envelope sender is empty (MAIL FROM:<>); "
    "add a From header naming the author (RFC 5322 section 3.6.2)"
)
SMTPAPI_NOT_UTF8 = (
    "X-SMTPAPI: the header is not valid UTF-8; send it as ASCII JSON with other characters "
    "escaped as \\uXXXX"
)


class HeaderError(Exception):
    """The header section cannot be used; ``reply`` is the complete SMTP reply (5xx)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class HeaderInfo:
    smtpapi: str | None  # the first X-SMTPAPI value, unfolded (later ones are ignored)
    from_addr: str | None  # addr-spec of the From field's first mailbox
    from_domain: str  # its domain as an A-label, "" when there is none
    message_id: str  # the message's Message-ID (stripped), or the one added
    subject: str | None  # as written, unfolded (encoded-words are not decoded)
    eight_bit: bool  # the new header section has octets above 127


# -- where the header section ends -----------------------------------------------------------


@overload
def header_end(buf: bytes, final: Literal[True]) -> tuple[int, int]: ...
@overload
def header_end(buf: bytes, final: bool) -> tuple[int, int] | None: ...


def header_end(buf: bytes, final: bool) -> tuple[int, int] | None:
    """(end of the header section, start of the body), or None while ``buf`` cannot tell.

    The section is the leading header lines (``name:`` fields and, after a field, lines
    starting with a blank). It ends at the empty line (the body follows it) or at the first
    line that is neither, which then starts the body: a missing blank line, which Postfix
    tolerates. ``final``: ``buf`` is the whole message. A prefix of a message gives None or
    the answer for the whole message, never another one.
    """
    pos, in_field = 0, False
    while True:
        eol = buf.find(CRLF, pos)
        if eol < 0:
            return _last_line(buf, pos, final, in_field)
        if eol == pos:
            return pos, pos + 2
        if not _is_header_line(buf, pos, eol, in_field):
            return pos, pos
        pos, in_field = eol + 2, True


def _is_header_line(buf: bytes, start: int, end: int, in_field: bool) -> bool:
    if buf[start] in _WSP:
        return in_field
    return _NAME.match(buf, start, end) is not None


def _last_line(buf: bytes, pos: int, final: bool, in_field: bool) -> tuple[int, int] | None:
    """The line at ``pos`` has no CRLF (yet)."""
    n = len(buf)
    if final:
        if pos < n and _is_header_line(buf, pos, n, in_field):
            return n, n
        return pos, pos
    if pos == n:
        return None
    if buf[pos] in _WSP:
        return None if in_field else (pos, pos)  # a continuation line, or not a header
    if pos == n - 1 and buf[pos] == 0x0D:
        return None  # perhaps the empty line
    return None if _could_be_field(buf, pos, n) else (pos, pos)


def _could_be_field(buf: bytes, pos: int, n: int) -> bool:
    return _NAME.match(buf, pos, n) is not None or _NAME_SO_FAR.fullmatch(buf, pos, n) is not None


# -- fields ----------------------------------------------------------------------------------


def split_fields(section: bytes) -> list[bytes]:
    """The fields of a header section, each with its continuation lines and CRLFs, so that
    ``b"".join(split_fields(s)) == s``. A leading continuation line is a field of its own."""
    starts: list[int] = []
    pos, n = 0, len(section)
    while pos < n:
        if not starts or section[pos] not in _WSP:
            starts.append(pos)
        eol = section.find(CRLF, pos)
        pos = n if eol < 0 else eol + 2
    return [section[a:b] for a, b in zip(starts, [*starts[1:], n], strict=False)]


def field_name(field: bytes) -> bytes:
    """The lower-case name of a field, b"" for a line that is not one."""
    m = _NAME.match(field)
    return m[1].lower() if m else b""


def field_value(field: bytes) -> bytes:
    """The unfolded value (RFC 5322 §2.2.3: every CRLF removed), blanks stripped."""
    m = _NAME.match(field)
    value = field[m.end() :] if m else field
    return value.replace(CRLF, b"").strip(_WSP)


# -- what the relay changes ------------------------------------------------------------------


def prepare_headers(
    section: bytes, *, received: bytes, envelope_sender: str, message_id: str, date: str
) -> tuple[bytes, HeaderInfo]:
    """The header section to store (without the blank line after it) and what it says.

    ``received`` first, then the fields as they came (byte for byte; a last line without
    its CRLF gets one) without any X-SMTPAPI, then ``Message-ID: message_id`` (given with
    its brackets), ``Date: date`` and ``From: envelope_sender`` for those missing.
    """
    out = [received]
    seen: dict[bytes, bytes] = {}  # name -> value of the first such field
    for field in split_fields(section):
        name = field_name(field)
        value = field_value(field) if name in _NOTED else b""
        if name == b"message-id" and not value:
            continue  # an empty Message-ID: the generated one replaces it
        if name in _NOTED:
            seen.setdefault(name, value)
        if name != b"x-smtpapi":
            out.append(field if field.endswith(CRLF) else field + CRLF)
    own_id = seen.get(b"message-id")
    if not own_id:
        out.append(_field("Message-ID", message_id))
    if b"date" not in seen:
        out.append(_field("Date", date))
    from_addr = _first_mailbox(seen[b"from"]) if b"from" in seen else _sender(envelope_sender)
    if b"from" not in seen:
        out.append(_field("From", addr_spec(envelope_sender)[0]))
    new = b"".join(out)
    info = HeaderInfo(
        smtpapi=_smtpapi(seen.get(b"x-smtpapi")),
        from_addr=from_addr,
        from_domain=_domain(from_addr),
        message_id=_text(own_id) if own_id else message_id,
        subject=_text(seen[b"subject"]) if b"subject" in seen else None,
        eight_bit=not new.isascii(),
    )
    return new, info


_NOTED = frozenset({b"x-smtpapi", b"from", b"message-id", b"subject", b"date"})
_BREAKS = re.compile(r"[\r\n]+")


def _field(name: str, value: str) -> bytes:
    return f"{name}: {_BREAKS.sub(' ', value)}\r\n".encode()


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _smtpapi(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderError(smtp_reply(C550_CONTENT, SMTPAPI_NOT_UTF8, f"; see {DOCS}")) from None


def _sender(envelope_sender: str) -> str:
    if not envelope_sender:
        raise HeaderError(smtp_reply(C550_CONTENT, NO_AUTHOR))
    return envelope_sender


# The common From values, ``addr`` and ``Name <addr>`` (unquoted or quoted name without
# specials): no need for email.utils' parser, which cost 2.5% of the node's time under
# `postline bench smtp`. Anything else (comments, groups, several mailboxes) takes it.
_SIMPLE_FROM = re.compile(
    rb'\s*(?:(?:"[^"\\\r\n]*"|[^"<>()\[\],;:@\\\r\n]*)\s*<([^<>()\[\],;:@\s"\\]+@[^<>()\[\],;:@\s"\\]+)>'
    rb'|([^<>()\[\],;:@\s"\\]+@[^<>()\[\],;:@\s"\\]+))\s*'
)


def _first_mailbox(value: bytes) -> str | None:
    """The addr-spec of the first mailbox of a From value, None when there is none."""
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple is not None and value.isascii():
        return (simple.group(1) or simple.group(2)).decode("ascii")
    found = email.utils.getaddresses([_text(value)])
    addr = found[0][1] if found else ""
    local, at, domain = addr.rpartition("@")
    return addr if local and at and domain else None


def _domain(addr: str | None) -> str:
    domain = addr.rpartition("@")[2] if addr else ""
    return (a_label(domain) or "") if domain else ""


# -- Received --------------------------------------------------------------------------------

PROTOCOLS = frozenset(
    {"SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"}  # RFC 3848
    | {"UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA"}  # RFC 6531 §3.7.3
)
MAX_TOKEN = 255  # a host name (RFC 1035 §2.3.4) or an address literal
MAX_RECIPIENT = 512  # octets; longer, and the "for" clause is left out
_UNSAFE = re.compile(r"[^A-Za-z0-9.:_\[\]-]")  # not in a host name or address literal
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")


def protocol_name(*, esmtp: bool, tls: bool, auth: bool, smtputf8: bool = False) -> str:
    """The ``with`` keyword of RFC 3848 / RFC 6531 for a session."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def received_field(
    *,
    helo: str,
    client_ip: str,
    client_host: str | None,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    when: float,
) -> bytes:
    """``Received: from helo (host [ip])`` / ``by hostname (Postline) with P id ID`` /
    ``for <rcpt>; date``, in three lines of at most 998 octets. What the client chose
    (helo, recipient) and what DNS said (host) cannot add a line or a field."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol name {protocol!r} (RFC 3848)")
    host = _token(client_host) if client_host else "unknown"
    ip = _token(client_ip)
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [
        f"Received: from {_token(helo) or host} ({host} [{literal}])",
        f"\tby {_token(hostname)} (Postline) with {protocol} id {_token(queue_id)}",
    ]
    rcpt = _CONTROL.sub("", recipient or "")
    if rcpt and len(rcpt.encode("utf-8", "replace")) <= MAX_RECIPIENT:
        lines.append(f"\tfor <{rcpt}>; {format_date(when)}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{format_date(when)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def _token(text: str) -> str:
    """A name as it may appear: host-name characters only (others become ``?``), bounded."""
    text = _UNSAFE.sub("?", text)
    return text if len(text) <= MAX_TOKEN else text[: MAX_TOKEN - 3] + "..."
