"""Field-level rules of a send request, used by :mod:`postline.accept.validate`.

Every ``check_*`` function appends :class:`FieldError` s to ``errs`` and never raises.
Messages follow SendGrid's mail-send error texts where SendGrid has one.

What is accepted must render (issue 10: a content_id that could not be encoded wedged a
destination), so beside SendGrid's rules these check what rendering and storing need:
the content_id goes raw into a Content-ID header (printable ASCII, bounded), content and
attachment types are MIME types (else rendering would replace them), header names fit a
header line, and the numbers and nesting of ``dynamic_template_data`` fit the stored
(msgpack) form and can be decoded again at delivery.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from postline.accept.address import is_valid_email
from postline.accept.headers import check_special
from postline.model.errors import FieldError
from postline.model.mail import (
    Asm,
    Attachment,
    Content,
    EmailAddress,
    MailSendRequest,
    MailSettings,
)

Errors = list[FieldError]

MAX_SCHEDULE_AHEAD = 72 * 3600
MAX_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
MAX_CATEGORY_LEN = 255
MAX_GROUPS_TO_DISPLAY = 25
MAX_HEADER_NAME = 76  # render.py keeps field names of 1-76 characters (RFC 5322 §2.1.1)
MAX_CONTENT_ID = 900  # "Content-ID: <" + id + ">" must fit a 998-octet line
MAX_ID = 2**63 - 1  # asm group ids are stored as signed 64-bit integers
MAX_DEPTH = 32  # nesting of dynamic_template_data (decoded again at delivery)
INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack stores
IP_POOL_LEN = (2, 64)
RESERVED_HEADERS = (
    "x-sg-id, x-sg-eid, received, dkim-signature, Content-Type, Content-Transfer-Encoding, "
    "To, From, Subject, Reply-To, CC, BCC"
)
_RESERVED = frozenset(h.strip().lower() for h in RESERVED_HEADERS.split(","))
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII, no space, no ':'
_PRINTABLE_ASCII = re.compile(r"[ -~]*")
_CONTENT_ID = re.compile(r"[!-;=?-~]+")  # printable ASCII but space, '<' and '>'
# RFC 2045 §5.1 type "/" subtype, the token characters render_mime.py accepts
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
# RFC 2045 §5.1 parameter, as render_mime.py writes it: attribute=token or quoted-string
_PARAM = re.compile(r'[A-Za-z0-9!#$&^_.+-]+=(?:[\x21-\x7e]+|"[\x20-\x7e]*")')
_DISPOSITIONS = frozenset({"inline", "attachment"})
_json = msgspec.json.Encoder()

INVALID_RECIPIENT = "Does not contain a valid address."
SCHEDULE_TOO_FAR = "Scheduling more than 72 hours in advance is forbidden."
CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must "
    "be at least one defined content block. We typically suggest both text/plain and "
    "text/html blocks are included, but only one block is required."
)
CONTENT_ORDER = (
    "If present, text/plain must be first, followed by text/html, followed by any other content."
)
CONTENT_TYPE_EMPTY = "The content type must be a string at least one character in length."
CONTENT_TYPE_CHARS = "The content type cannot contain ';', or CRLF characters."
CONTENT_TYPE_MIME = "The content type must be a MIME type such as text/plain or text/html."
CONTENT_VALUE_EMPTY = "The content value must be a string at least one character in length."
NAME_CRLF = "The name cannot contain CR or LF characters."
NAME_SEPARATORS = "The name cannot contain ';' or ',' characters."
HEADER_VALUE_CRLF = "Header values cannot contain CR or LF characters."
ATTACHMENT_CONTENT_EMPTY = "The attachment content is required."
ATTACHMENT_NOT_BASE64 = "The attachment content must be base64 encoded."
FILENAME_REQUIRED = "The attachment filename parameter is required."
FILENAME_CHARS = "The attachment filename cannot contain ';', ',', or CRLF characters."
DISPOSITION = 'The disposition of your attachment can be either "inline" or "attachment".'
ATTACHMENT_TYPE = (
    "The attachment type must be at least one character and cannot contain CRLF characters."
)
ATTACHMENT_MIME = (
    "The attachment type must be a MIME type such as image/png or application/pdf, "
    "optionally followed by parameters such as '; charset=windows-1252'."
)
CONTENT_ID_CHARS = (
    f"The attachment content_id must be at most {MAX_CONTENT_ID} printable ASCII characters "
    "without spaces, '<' or '>' (it becomes the Content-ID header of the attachment; "
    'reference it as "cid:<content_id>" in the HTML).'
)
SEND_AT_NEGATIVE = "The send_at must be a unix timestamp (seconds since 1970), not negative."
GROUP_ID_RANGE = f"The asm group ids must be between 0 and {MAX_ID}."
TEMPLATE_DATA_DEPTH = f"The dynamic_template_data may not be nested more than {MAX_DEPTH} levels."
TEMPLATE_DATA_INT = (
    "The dynamic_template_data may hold integers between -2^63 and 2^64-1 only; "
    "send larger numbers as strings."
)
TOO_MANY_CATEGORIES = f"The categories parameter may not have more than {MAX_CATEGORIES} items."
CATEGORIES_UNIQUE = "The categories parameter must contain unique items."
CATEGORY_TOO_LONG = f"A category cannot exceed {MAX_CATEGORY_LEN} characters."
CATEGORY_ASCII = "A category may contain only printable ASCII characters."
TOO_MANY_GROUPS = (
    f"The groups_to_display parameter may not have more than {MAX_GROUPS_TO_DISPLAY} items."
)
IP_POOL_LENGTH = "The ip_pool_name must be between {} and {} characters.".format(*IP_POOL_LEN)
BYPASS_EXCLUSIVE = "The bypass_list_management filter cannot be combined with other bypass filters."
BCC_EMAIL = "The bcc email does not contain a valid address."
SPAM_THRESHOLD = "The spam check threshold must be between 1 and 10."


def add(errs: Errors, field: str | None, message: str) -> None:
    errs.append(FieldError(message, field))


def has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value


def json_size(obj: Mapping[str, str]) -> int:
    """Size in bytes of ``obj`` encoded as JSON (how argument limits are measured)."""
    return len(_json.encode(obj))


_BAD_RECIPIENT_NAME = re.compile(r"[\r\n;,]")


def recipient_ok(addr: EmailAddress) -> bool:
    """Quick test of a to/cc/bcc entry; :func:`check_address` explains a False."""
    name = addr.name
    valid_name = name is None or _BAD_RECIPIENT_NAME.search(name) is None
    return valid_name and is_valid_email(addr.email)


def check_address(
    errs: Errors, path: str, addr: EmailAddress, label: str | None, recipient: bool = False
) -> None:
    """``label`` names the field in messages (``from``); None for to/cc/bcc recipients."""
    if not is_valid_email(addr.email):
        message = (
            INVALID_RECIPIENT
            if label is None
            else (f"The {label} email does not contain a valid address.")
        )
        errs.append(FieldError(message, f"{path}.email"))
    if addr.name is not None:
        check_name(errs, f"{path}.name", addr.name, recipient)


def check_name(errs: Errors, path: str, name: str, recipient: bool) -> None:
    if has_crlf(name):
        add(errs, path, NAME_CRLF)
    elif recipient and (";" in name or "," in name):
        add(errs, path, NAME_SEPARATORS)


def check_no_crlf(errs: Errors, path: str, label: str, value: str | None) -> None:
    if value is not None and has_crlf(value):
        errs.append(FieldError(f"The {label} cannot contain CR or LF characters.", path))


def check_send_at(errs: Errors, path: str, send_at: int | None, now: float) -> None:
    if send_at is None:
        return
    if send_at > now + MAX_SCHEDULE_AHEAD:
        errs.append(FieldError(SCHEDULE_TOO_FAR, path))
    elif send_at < 0:
        errs.append(FieldError(SEND_AT_NEGATIVE, path))


def check_template_data(errs: Errors, path: str, data: Mapping[str, Any]) -> None:
    """Nesting and integers of ``dynamic_template_data`` (JSON of any shape).

    Iterative on purpose: the data may be a thousand levels deep when it arrives.
    """
    stack: list[tuple[object, int]] = [(data, 1)]
    low, high = INT_RANGE
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                add(errs, path, TEMPLATE_DATA_DEPTH)
                return
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(value, int) and not low <= value <= high:
            add(errs, path, TEMPLATE_DATA_INT)
            return


# -- headers -------------------------------------------------------------------------------


def check_headers(errs: Errors, path: str, headers: Mapping[str, str]) -> None:
    seen: set[str] = set()
    for key, value in headers.items():
        if _HEADER_NAME.fullmatch(key) is None or len(key) > MAX_HEADER_NAME:
            errs.append(FieldError(_bad_header_name(key), path))
            continue
        lower = key.lower()
        if lower in _RESERVED:
            errs.append(FieldError(_reserved(key), f"{path}.{key}"))
        elif lower in seen:
            errs.append(FieldError(f"The header {key} is set more than once.", f"{path}.{key}"))
        if has_crlf(value):
            add(errs, f"{path}.{key}", HEADER_VALUE_CRLF)
        else:
            check_special(errs, f"{path}.{key}", key, value)
        seen.add(lower)


def _bad_header_name(key: str) -> str:
    shown = key if len(key) <= 80 else key[:77] + "..."
    return (
        f"Invalid header name {shown!r}: header names must be 1 to {MAX_HEADER_NAME} printable "
        "ASCII characters without spaces or ':'."
    )


def _reserved(key: str) -> str:
    return f"The header {key} is reserved. You may not overwrite: {RESERVED_HEADERS}."


# -- content -------------------------------------------------------------------------------


def check_content(errs: Errors, content: list[Content] | None, template_id: str | None) -> None:
    if not content:
        if not template_id:
            errs.append(FieldError(CONTENT_REQUIRED, "content"))
        return
    seen_other = False
    for i, block in enumerate(content):
        _check_block(errs, i, block)
        kind = block.type.lower()
        misplaced = (kind == "text/plain" and i > 0) or (kind == "text/html" and seen_other)
        if misplaced:
            errs.append(FieldError(CONTENT_ORDER, f"content.{i}.type"))
        seen_other = seen_other or kind not in ("text/plain", "text/html", "text/x-amp-html")


def _check_block(errs: Errors, i: int, block: Content) -> None:
    if not block.type:
        add(errs, f"content.{i}.type", CONTENT_TYPE_EMPTY)
    elif ";" in block.type or has_crlf(block.type):
        add(errs, f"content.{i}.type", CONTENT_TYPE_CHARS)
    elif _MIME_TYPE.fullmatch(block.type.strip()) is None:
        add(errs, f"content.{i}.type", CONTENT_TYPE_MIME)
    if not block.value:
        add(errs, f"content.{i}.value", CONTENT_VALUE_EMPTY)


# -- attachments ---------------------------------------------------------------------------


def check_attachments(errs: Errors, attachments: list[Attachment]) -> None:
    for i, att in enumerate(attachments):
        path = f"attachments.{i}"
        _check_attachment_content(errs, path, att.content)
        _check_filename(errs, path, att.filename)
        if att.disposition is not None and att.disposition not in _DISPOSITIONS:
            add(errs, f"{path}.disposition", DISPOSITION)
        if att.type is not None:
            _check_attachment_type(errs, path, att.type)
        if att.content_id and not content_id_ok(att.content_id):
            add(errs, f"{path}.content_id", CONTENT_ID_CHARS)


def content_id_ok(cid: str) -> bool:
    return len(cid) <= MAX_CONTENT_ID and _CONTENT_ID.fullmatch(cid) is not None


def _check_attachment_type(errs: Errors, path: str, value: str) -> None:
    if not value or has_crlf(value):
        add(errs, f"{path}.type", ATTACHMENT_TYPE)
    else:
        head, _, params = value.partition(";")
        # render_mime keeps the parameters (a CSV's charset): a malformed one would be lost
        bad_params = any(p.strip() and not _PARAM.fullmatch(p.strip()) for p in params.split(";"))
        if _MIME_TYPE.fullmatch(head.strip()) is None or bad_params:
            add(errs, f"{path}.type", ATTACHMENT_MIME)


def _check_attachment_content(errs: Errors, path: str, content: str) -> None:
    if not content:
        add(errs, f"{path}.content", ATTACHMENT_CONTENT_EMPTY)
    elif not is_base64(content):
        add(errs, f"{path}.content", ATTACHMENT_NOT_BASE64)


def _check_filename(errs: Errors, path: str, filename: str) -> None:
    if not filename:
        add(errs, f"{path}.filename", FILENAME_REQUIRED)
    elif ";" in filename or "," in filename or has_crlf(filename):
        add(errs, f"{path}.filename", FILENAME_CHARS)


def is_base64(data: str) -> bool:
    """Standard base64 with padding; line breaks (MIME style) are tolerated."""
    if has_crlf(data):
        data = data.replace("\r", "").replace("\n", "")
    if not data.isascii():
        return False
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return False
    return True


# -- categories, asm, ip pool, ids, settings -----------------------------------------------


def check_categories(errs: Errors, categories: list[str]) -> None:
    if len(categories) > MAX_CATEGORIES:
        add(errs, "categories", TOO_MANY_CATEGORIES)
    if len(set(categories)) != len(categories):
        add(errs, "categories", CATEGORIES_UNIQUE)
    for i, category in enumerate(categories):
        if len(category) > MAX_CATEGORY_LEN:
            add(errs, f"categories.{i}", CATEGORY_TOO_LONG)
        if _PRINTABLE_ASCII.fullmatch(category) is None:
            add(errs, f"categories.{i}", CATEGORY_ASCII)


def check_asm(errs: Errors, asm: Asm) -> None:
    if not 0 <= asm.group_id <= MAX_ID:
        add(errs, "asm.group_id", GROUP_ID_RANGE)
    shown = asm.groups_to_display
    if shown is not None and len(shown) > MAX_GROUPS_TO_DISPLAY:
        add(errs, "asm.groups_to_display", TOO_MANY_GROUPS)
        return
    for i, group in enumerate(shown or ()):
        if not 0 <= group <= MAX_ID:
            add(errs, f"asm.groups_to_display.{i}", GROUP_ID_RANGE)


def check_ids(errs: Errors, req: MailSendRequest) -> None:
    pool = req.ip_pool_name
    low, high = IP_POOL_LEN
    if pool is not None and not low <= len(pool) <= high:
        add(errs, "ip_pool_name", IP_POOL_LENGTH)
    check_no_crlf(errs, "ip_pool_name", "ip_pool_name", pool)
    check_no_crlf(errs, "batch_id", "batch_id", req.batch_id)
    check_no_crlf(errs, "template_id", "template_id", req.template_id)


def check_mail_settings(errs: Errors, ms: MailSettings) -> None:
    if _enabled(ms.bypass_list_management) and _other_bypass(ms):
        add(errs, "mail_settings.bypass_list_management", BYPASS_EXCLUSIVE)
    bcc = ms.bcc
    if bcc is not None and bcc.enable and not is_valid_email(bcc.email or ""):
        add(errs, "mail_settings.bcc.email", BCC_EMAIL)
    spam = ms.spam_check
    if spam is not None and spam.threshold is not None and not 1 <= spam.threshold <= 10:
        add(errs, "mail_settings.spam_check.threshold", SPAM_THRESHOLD)


def _other_bypass(ms: MailSettings) -> bool:
    others = (ms.bypass_spam_management, ms.bypass_bounce_management)
    return any(map(_enabled, others)) or _enabled(ms.bypass_unsubscribe_management)


def _enabled(setting: object) -> bool:
    return bool(getattr(setting, "enable", False))
