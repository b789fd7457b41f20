"""The SendGrid v3 ``POST /v3/mail/send`` body as typed structs.

Field names and nesting follow ``tsg_mail_v3.json`` (SendGrid's OpenAPI description).
Decoding checks JSON types only; the semantic rules (limits, uniqueness, CR/LF, reserved
headers, ...) live in :mod:`postline.accept.validate` so that every problem is reported at
once, as SendGrid does.

The same structs are the stored form of a message: :class:`MailBody` (everything shared by
the personalizations, stored once) and :class:`Personalization` (stored per message), both
encoded with msgpack. Rendering reads them back at delivery time.
"""

from __future__ import annotations

import email.utils
from typing import Any

import msgspec
from msgspec import Struct, field


class EmailAddress(Struct, omit_defaults=True):
    email: str
    name: str | None = None


class Personalization(Struct, omit_defaults=True):
    to: list[EmailAddress] | None = None
    cc: list[EmailAddress] | None = None
    bcc: list[EmailAddress] | None = None
    from_: EmailAddress | None = field(default=None, name="from")
    subject: str | None = None
    headers: dict[str, str] | None = None
    substitutions: dict[str, str] | None = None
    dynamic_template_data: dict[str, Any] | None = None
    custom_args: dict[str, str] | None = None
    send_at: int | None = None


class Content(Struct, omit_defaults=True):
    type: str
    value: str


class Attachment(Struct, omit_defaults=True):
    content: str
    filename: str
    type: str | None = None
    disposition: str | None = None
    content_id: str | None = None


class Asm(Struct, omit_defaults=True):
    group_id: int
    groups_to_display: list[int] | None = None


class Enable(Struct, omit_defaults=True):
    enable: bool | None = None


class Footer(Struct, omit_defaults=True):
    enable: bool | None = None
    text: str | None = None
    html: str | None = None


class BccSetting(Struct, omit_defaults=True):
    enable: bool | None = None
    email: str | None = None


class SpamCheck(Struct, omit_defaults=True):
    enable: bool | None = None
    threshold: int | None = None
    post_to_url: str | None = None


class MailSettings(Struct, omit_defaults=True):
    bypass_list_management: Enable | None = None
    bypass_spam_management: Enable | None = None
    bypass_bounce_management: Enable | None = None
    bypass_unsubscribe_management: Enable | None = None
    footer: Footer | None = None
    sandbox_mode: Enable | None = None
    bcc: BccSetting | None = None
    spam_check: SpamCheck | None = None


class ClickTracking(Struct, omit_defaults=True):
    enable: bool | None = None
    enable_text: bool | None = None


class OpenTracking(Struct, omit_defaults=True):
    enable: bool | None = None
    substitution_tag: str | None = None


class SubscriptionTracking(Struct, omit_defaults=True):
    enable: bool | None = None
    text: str | None = None
    html: str | None = None
    substitution_tag: str | None = None


class Ganalytics(Struct, omit_defaults=True):
    enable: bool | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    utm_campaign: str | None = None


class TrackingSettings(Struct, omit_defaults=True):
    click_tracking: ClickTracking | None = None
    open_tracking: OpenTracking | None = None
    subscription_tracking: SubscriptionTracking | None = None
    ganalytics: Ganalytics | None = None


class MailBody(Struct, omit_defaults=True):
    """Everything in a send request except the personalizations: stored once per request."""

    from_: EmailAddress | None = field(default=None, name="from")
    reply_to: EmailAddress | None = None
    reply_to_list: list[EmailAddress] | None = None
    subject: str | None = None
    content: list[Content] | None = None
    attachments: list[Attachment] | None = None
    template_id: str | None = None
    headers: dict[str, str] | None = None
    categories: list[str] | None = None
    custom_args: dict[str, str] | None = None
    send_at: int | None = None
    batch_id: str | None = None
    asm: Asm | None = None
    ip_pool_name: str | None = None
    mail_settings: MailSettings | None = None
    tracking_settings: TrackingSettings | None = None
    sections: dict[str, str] | None = None


class MailSendRequest(MailBody, omit_defaults=True):
    """The whole request body as decoded from JSON."""

    personalizations: list[Personalization] | None = None

    def body(self) -> MailBody:
        """The shared part, without personalizations (what the spool stores once)."""
        fields = {f: getattr(self, f) for f in MailBody.__struct_fields__}
        return MailBody(**fields)


def find_header(headers: dict[str, str] | None, name: str) -> str | None:
    """The value of the custom header ``name`` (lower case), matched case-insensitively."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def mailbox_of(value: str) -> EmailAddress | None:
    """The one mailbox of a header value (``Name <addr>`` or ``addr``), or None."""
    found = email.utils.getaddresses([value])
    if len(found) != 1 or "@" not in found[0][1]:
        return None
    name, addr = found[0]
    return EmailAddress(addr, name or None)


_request_decoder = msgspec.json.Decoder(MailSendRequest)
_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(MailBody)
_pers_decoder = msgspec.msgpack.Decoder(Personalization)


class NestedTooDeep(msgspec.DecodeError):
    """The JSON nests deeper than the decoder can follow (100,000 nested arrays once
    answered 500: msgspec raised RecursionError, under any key, even an unknown one)."""


def decode_request(raw: bytes) -> MailSendRequest:
    """Decode JSON; raises ``msgspec.ValidationError`` / ``msgspec.DecodeError``."""
    try:
        return _request_decoder.decode(raw)
    except RecursionError:
        raise NestedTooDeep(
            "arrays and objects are nested too deeply; send a flatter JSON body"
        ) from None


def encode_stored(obj: MailBody | Personalization) -> bytes:
    return _body_encoder.encode(obj)


def decode_body(blob: bytes) -> MailBody:
    return _body_decoder.decode(blob)


def decode_personalization(blob: bytes) -> Personalization:
    return _pers_decoder.decode(blob)
