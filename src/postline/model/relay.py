"""The stored form of a message relayed over SMTP: the bytes as received, not a request.

A relayed message is delivered as it was received (plus the headers the relay adds:
Received, and Message-ID / Date / From when missing; minus X-SMTPAPI), never re-rendered.
The spool keeps it with the same two blobs as an HTTP request:

* the **body** blob is the whole RFC 5322 message (header section, blank line, body) with
  CRLF line ends, not dot-stuffed, shared by every message of the SMTP transaction. It
  always starts with the ``Received:`` field the relay prepends, so its first octet is
  ASCII; a stored :class:`postline.model.mail.MailBody` is msgpack of a map, whose first
  octet is 0x80-0x8f, 0xde or 0xdf. :func:`is_raw` tells them apart without a flag column.
* the **personalization** blob is msgpack of :class:`RelayMessage`: what differs per
  message of the transaction (X-SMTPAPI ``to`` fans one DATA out into one message per
  address, each with its own To header and substitution values) and what its events carry.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct


class RelayMessage(Struct, omit_defaults=True):
    mail_from: str  # the envelope sender (MAIL FROM), "" for the null sender
    from_domain: str = ""  # the From header's domain (A-label): DKIM signs for it
    to_header: str | None = None  # X-SMTPAPI "to": this message's To header replaced by it
    sub: dict[str, str] | None = None  # X-SMTPAPI "sub": tag -> this recipient's value
    section: dict[str, str] | None = None  # X-SMTPAPI "section": tag -> text (may hold subs)
    categories: list[str] | None = None  # X-SMTPAPI "category"
    unique_args: dict[str, str] | None = None  # X-SMTPAPI "unique_args" (event fields)
    smtputf8: bool = False  # MAIL FROM had SMTPUTF8: deliver with it
    eight_bit: bool = False  # the content has octets above 127


def is_raw(body: bytes | memoryview) -> bool:
    """True when a stored body blob is a relayed message, False for a msgpack MailBody."""
    return len(body) > 0 and body[0] < 0x80


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RelayMessage)


def encode_relay(m: RelayMessage) -> bytes:
    return _encoder.encode(m)


def decode_relay(blob: bytes) -> RelayMessage:
    return _decoder.decode(blob)
