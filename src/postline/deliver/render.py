"""Render a stored message (MailBody + one Personalization) into bytes ready for DATA.

Written out by hand rather than with ``email.message`` and its generator, which is an order
of magnitude slower; the stdlib parser checks the result in the tests instead (round trips,
golden files, hypothesis). The header order is fixed::

    From, To, Cc, Reply-To, Subject, Date, Message-ID, MIME-Version,
    custom headers (the body's, then the personalization's, then ``headers_extra``),
    Content-Type, Content-Transfer-Encoding

There is no Bcc field (RFC 5322 §3.6.3: Bcc recipients are envelope-only). Legacy
substitutions replace each key by its value in the subject, the reply-to addresses (as
SendGrid's v3 reference says: subject, reply-to and content), the contents and the custom
header values, in one pass (a value is never substituted again); a message that could
grow past :data:`~postline.model.size.RENDER_LIMIT` that way is refused before anything
is built. Dynamic templates are not rendered here. Header fields are built in
:mod:`render_headers`, bodies in :mod:`render_mime`.

Headers the sender set that accept checked as they will be sent (accept/headers.py), with
no substitution: ``Message-ID`` (it arrives as ``message_id``: the stored smtp-id),
``Date`` (kept instead of the generated one) and ``Sender`` (an address field; accept
keeps it only when it is the From). The generated Date is ``date``, the time the message
was accepted, or its send_at when that is later (when it was due to enter the mail
system, RFC 5322 §3.6.1): the same on every attempt.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from postline.deliver.render_headers import (
    CRLF,
    addr_spec,
    address_field,
    format_date,
    msg_id,
    unstructured,
)
from postline.deliver.render_mime import RenderError, body_entity
from postline.model.mail import (
    Content,
    EmailAddress,
    MailBody,
    Personalization,
    find_header,
    mailbox_of,
)
from postline.model.size import RENDER_LIMIT, SizeBound

# Fields this module writes itself; a custom header of the same name is dropped (accept
# rejects them; this keeps a stored message from ever carrying two From fields).
RESERVED = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
        "mime-version", "content-type", "content-transfer-encoding", "sender",
    }
)  # fmt: skip
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")  # RFC 5322 §3.6.8 ftext


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    data: bytes  # CRLF lines of at most 998 octets, ending in CRLF (not dot-stuffed)
    mail_from: str  # the envelope sender: the From address
    smtputf8: bool  # an address has a non-ASCII local part (RFC 6531)
    eight_bit: bool  # data has octets above 127 (then only in SMTPUTF8 addresses)
    # The domain DKIM signs for and VERP uses; "" means mail_from's. A relayed message
    # (deliver/render_raw.py) names its From header's domain here, its envelope sender
    # being the client's.
    sign_domain: str = ""


def render(
    body: MailBody,
    pers: Personalization,
    *,
    message_id: str,
    date: float,
    headers_extra: dict[str, str] | None = None,
    bound: SizeBound | None = None,
) -> RenderedMessage:
    """``bound``: a SizeBound of this very ``body``, when the caller shares one among the
    messages of a body (deliver/jobs.py); else one is made here."""
    sender = pers.from_ or body.from_
    if sender is None:
        raise RenderError("the message has no From address")
    size = (bound or SizeBound(body)).size(pers)  # before any big string is built
    if size > RENDER_LIMIT:
        raise RenderError(
            f"it could grow to {size:,} octets after substitution (limit {RENDER_LIMIT:,})"
        )
    sub = _substituter(pers.substitutions)
    head, utf8 = _address_fields(sender, pers, body, sub)
    subject = pers.subject if pers.subject is not None else body.subject
    if subject is not None:
        head.append(unstructured("Subject", sub(subject)))
    head.append(_date_field(body, pers, date))
    head.append(f"Message-ID: {msg_id(message_id)}{CRLF}")
    head.append(f"MIME-Version: 1.0{CRLF}")
    utf8 |= _sender_field(head, body, pers)
    for name, value in _custom_headers(body, pers, headers_extra, sub):
        head.append(unstructured(name, value))
    contents = [c if sub is _same else Content(c.type, sub(c.value)) for c in body.content or []]
    token = f"{zlib.crc32(message_id.encode('utf-8', 'replace')):08x}"
    entity = body_entity(contents, body.attachments or [], token)
    data = "".join(head).encode("utf-8") + entity.to_bytes()
    mail_from, _ = addr_spec(sender.email)
    bcc_utf8 = any(not addr_spec(a.email)[0].isascii() for a in pers.bcc or [])
    return RenderedMessage(data, mail_from, utf8 or bcc_utf8, not data.isascii())


def _address_fields(
    sender: EmailAddress, pers: Personalization, body: MailBody, sub: Callable[[str], str]
) -> tuple[list[str], bool]:
    reply_to = [body.reply_to] if body.reply_to else body.reply_to_list
    if reply_to and sub is not _same:
        reply_to = [EmailAddress(sub(a.email), a.name and sub(a.name)) for a in reply_to]
    head: list[str] = []
    utf8 = False
    for name, addresses in (("From", [sender]), ("To", pers.to), ("Cc", pers.cc)):
        if addresses:
            field, needs = address_field(name, addresses)
            head.append(field)
            utf8 |= needs
    if reply_to:
        field, needs = address_field("Reply-To", reply_to)
        head.append(field)
        utf8 |= needs
    return head, utf8


def _date_field(body: MailBody, pers: Personalization, accepted: float) -> str:
    """The sender's Date (checked at accept) or the acceptance / scheduled time."""
    custom = _header(body, pers, "date")
    if custom is not None:
        return unstructured("Date", custom.strip())
    send_at = pers.send_at if pers.send_at is not None else body.send_at
    return f"Date: {format_date(max(accepted, float(send_at or 0)))}{CRLF}"


def _header(body: MailBody, pers: Personalization, name: str) -> str | None:
    """The custom header ``name`` of the personalization, else of the body."""
    if not (pers.headers or body.headers):  # most messages: no lookups (run per message)
        return None
    return find_header(pers.headers, name) or find_header(body.headers, name)


def _sender_field(head: list[str], body: MailBody, pers: Personalization) -> bool:
    """Append the sender's Sender field, if set, as an address; True if it needs SMTPUTF8."""
    value = _header(body, pers, "sender")
    mailbox = mailbox_of(value) if value is not None else None
    if mailbox is None:  # none, or (from an older spool) not one address: nothing to say
        return False
    field, utf8 = address_field("Sender", [mailbox])
    head.append(field)
    return utf8


def _custom_headers(
    body: MailBody,
    pers: Personalization,
    extra: dict[str, str] | None,
    sub: Callable[[str], str],
) -> list[tuple[str, str]]:
    """Global, then personalization, then extra headers; a later one replaces its name."""
    merged: dict[str, tuple[str, str]] = {}
    for source, substitute in ((body.headers, True), (pers.headers, True), (extra, False)):
        for name, value in (source or {}).items():
            if _FIELD_NAME.fullmatch(name) and name.lower() not in RESERVED:
                merged[name.lower()] = (name, sub(value) if substitute else value)
    return list(merged.values())


def _same(text: str) -> str:
    return text


def _substituter(substitutions: dict[str, str] | None) -> Callable[[str], str]:
    keys = sorted((k for k in substitutions or {} if k), key=len, reverse=True)
    if not substitutions or not keys:
        return _same
    table = substitutions
    # Longest key first, so that "-name-" wins over "-n-" where both match.
    pattern = re.compile("|".join(map(re.escape, keys)))
    return lambda text: pattern.sub(lambda m: table[m.group(0)], text)
