"""What RFC 3464 DSNs and RFC 5965 ARF reports share: a multipart/report, address
fields (``rfc822; user@example.com``) and the returned message or its headers."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from email.utils import getaddresses

DELIVERY_STATUS = "delivery-status"  # RFC 3464 §2
FEEDBACK_REPORT = "feedback-report"  # RFC 5965 §2


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)  # the policy's message factory
    return msg


def report_type(msg: EmailMessage) -> str | None:
    """``delivery-status``, ``feedback-report`` (or another), None when not a report."""
    if msg.get_content_type() != "multipart/report":
        return None
    value = msg.get_param("report-type")
    return value.lower().strip() if isinstance(value, str) else None


def part(msg: EmailMessage, content_type: str) -> Message | None:
    """The first part of that type (RFC 6522: the report's second part, by convention)."""
    for p in msg.walk():
        if p.get_content_type() == content_type:
            return p
    return None


def field_blocks(p: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = p.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    if isinstance(payload, str):  # an odd transfer encoding: parse the text ourselves
        return [parse(b.encode("utf-8", "surrogateescape")) for b in payload.split("\n\n") if b]
    return []


def address_field(value: str | None) -> str:
    """``rfc822; Bob@Example.com`` → ``Bob@Example.com`` (RFC 3464 §2.1.2 address-type)."""
    if not value:
        return ""
    _, sep, addr = str(value).partition(";")
    text = (addr if sep else str(value)).strip()
    return text.strip("<>").strip()


def returned_headers(msg: EmailMessage) -> Message | None:
    """The headers of the message the report is about (text/rfc822-headers or
    message/rfc822, RFC 3462 §3 / RFC 5965 §2 (d))."""
    for p in msg.walk():
        kind = p.get_content_type()
        if kind == "message/rfc822":
            inner = p.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        if kind == "text/rfc822-headers":
            data = p.get_payload(decode=True)
            return parse(data if isinstance(data, bytes) else b"")
    return None


def addresses(m: Message | None, *names: str) -> list[str]:
    """Every address in those header fields of ``m``, in the order of ``names``."""
    if m is None:
        return []
    out: list[str] = []
    for name in names:
        values = [str(v) for v in m.get_all(name) or []]
        out += [addr for _, addr in getaddresses(values) if addr]
    return out
