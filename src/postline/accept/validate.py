"""Semantic validation of ``POST /v3/mail/send`` bodies, SendGrid style.

:func:`validate` returns *every* problem at once as :class:`FieldError` s with SendGrid's
field paths (``personalizations.1.to.0.email``). JSON type errors are found earlier, by
:func:`postline.model.mail.decode_request`; :func:`decode_error` turns those into the same
shape. The total size limit is separate (:func:`message_size`, :data:`MAX_MESSAGE_BYTES`)
because it is answered with 413, not 400.

Lenient on purpose: an empty global or personalization ``subject`` counts as absent, and an
``inline`` attachment without ``content_id`` is accepted.

Every field of the request (SendGrid's ``tsg_mail_v3.json``) and what it does in Postline.
Nothing is accepted and then ignored: a field that would have no effect is a 400 naming it
and saying that Postline does not support it yet (:mod:`postline.accept.unsupported`);
a setting that is present but disabled asks for nothing and is accepted.

==============================================  =============================================
field                                           in Postline
==============================================  =============================================
personalizations[].to, .cc                      envelope recipients; To and Cc fields
personalizations[].bcc                          envelope recipients only (no Bcc field)
personalizations[].from                         From of that personalization's message
personalizations[].subject                      Subject (wins over the global one)
personalizations[].headers                      header fields, after (and over) the global ones
personalizations[].substitutions                replaced in subject, content, reply-to and
                                                custom header values (not in Message-ID,
                                                Date, Sender, custom_args)
personalizations[].dynamic_template_data        **400** when not empty (needs templates)
personalizations[].custom_args                  in every event of the message
personalizations[].send_at                      first attempt not before it; the Date
from                                            From field
reply_to, reply_to_list                         Reply-To field
subject                                         Subject field
content[].type, .value                          the text parts (multipart/alternative)
attachments[]                                   MIME parts: type (parameters kept), filename,
                                                disposition, content_id (multipart/related)
headers                                         header fields; Message-ID and Date kept when
                                                well-formed, Sender only if it is the From,
                                                trace fields and X-SMTPAPI refused
                                                (:mod:`postline.accept.headers`)
categories                                      in every event
custom_args                                     in every event
send_at                                         first attempt not before it; the Date
template_id                                     **400** (templates)
batch_id                                        **400** (batches: pause/cancel)
asm.group_id, asm.groups_to_display             **400** (unsubscribe groups)
ip_pool_name                                    **400** (IP pools)
sections                                        **400** when not empty (section tags)
mail_settings.sandbox_mode                      enabled: 200, nothing stored or sent
mail_settings.bypass_list_management,           **400** when enabled (suppressed recipients
bypass_spam_management,                         are always dropped); accepted when disabled
bypass_bounce_management,
bypass_unsubscribe_management
mail_settings.footer                            **400** when enabled
mail_settings.bcc, .spam_check (legacy)         **400** when enabled
tracking_settings.click_tracking,               **400** when enabled; accepted when disabled
open_tracking, subscription_tracking,           or ``enable`` absent (no account-level
ganalytics                                      tracking exists to fall back on)
==============================================  =============================================
"""

from __future__ import annotations

import re

import msgspec

from postline.accept import validate_fields as vf
from postline.accept.headers import check_sender, sender_header
from postline.accept.unsupported import check_unsupported
from postline.model.domain import email_key
from postline.model.errors import FieldError
from postline.model.mail import MailSendRequest, NestedTooDeep, Personalization
from postline.model.size import MAX_MESSAGE_BYTES, SizeBound, growing_keys, growth_extremes

Errors = list[FieldError]

__all__ = ["MAX_MESSAGE_BYTES", "decode_error", "message_size", "validate"]
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_REPLY_TO = 1000

PERSONALIZATIONS_REQUIRED = (
    "The personalizations field is required and must have at least one personalization."
)
NO_PERSONALIZATION = "You must have at least one personalization."
TOO_MANY_RECIPIENTS = "There is a limit of 1000 total recipients (to + cc + bcc) per request."
TO_REQUIRED = "The to parameter is required for all personalization objects."
FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires "
    'the email parameter, but may also contain a name parameter.  e.g. {"email" : '
    '"example@example.com"}  or {"email" : "example@example.com", "name" : '
    '"Example Recipient"}.'
)
SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template with "
    "a subject defined or if every personalization has a subject defined."
)
_MERGED_ARGS = "custom_args (merged with the global custom_args)"
REPLY_TO_BOTH = "You can use either the reply_to property or reply_to_list property but not both."


def validate(req: MailSendRequest, now: float) -> list[FieldError]:
    """All semantic problems of ``req`` (empty when it can be accepted)."""
    errs: Errors = []
    _check_personalizations(errs, req, now)
    if not errs and any(p.substitutions for p in req.personalizations or ()):
        _check_expanded_sizes(errs, req)
    _check_sender(errs, req)
    _check_subject(errs, req)
    _check_body(errs, req, now)
    _check_sender_headers(errs, req)
    check_unsupported(errs, req)
    return errs


# -- personalizations ----------------------------------------------------------------------


def _check_personalizations(errs: Errors, req: MailSendRequest, now: float) -> None:
    items = req.personalizations
    if not items:
        errs.append(
            FieldError(
                PERSONALIZATIONS_REQUIRED if items is None else NO_PERSONALIZATION,
                "personalizations",
            )
        )
        return
    if len(items) > MAX_PERSONALIZATIONS:
        errs.append(FieldError(_too_many_personalizations(len(items)), "personalizations"))
        return
    if sum(_recipient_count(p) for p in items) > MAX_RECIPIENTS:
        errs.append(FieldError(TOO_MANY_RECIPIENTS, "personalizations"))
    for i, p in enumerate(items):
        _check_personalization(errs, f"personalizations.{i}", p, req, now)


def _too_many_personalizations(n: int) -> str:
    return (
        "The personalization block is limited to 1000 personalizations per API request. You "
        f"have provided {n} personalizations. Please consider splitting this into multiple "
        "requests and resending your request."
    )


def _recipient_count(p: Personalization) -> int:
    return len(p.to or ()) + len(p.cc or ()) + len(p.bcc or ())


def _check_personalization(
    errs: Errors, path: str, p: Personalization, req: MailSendRequest, now: float
) -> None:
    if not p.to:
        errs.append(FieldError(TO_REQUIRED, f"{path}.to"))
    _check_recipients(errs, path, p)
    if p.from_ is not None:
        vf.check_address(errs, f"{path}.from", p.from_, "from")
    if p.subject and vf.has_crlf(p.subject):
        vf.check_no_crlf(errs, f"{path}.subject", "subject", p.subject)
    if p.headers:
        vf.check_headers(errs, f"{path}.headers", p.headers)
    _check_extras(errs, path, p, req, now)


def _check_extras(
    errs: Errors, path: str, p: Personalization, req: MailSendRequest, now: float
) -> None:
    """custom_args and substitutions sizes, send_at."""
    if p.custom_args:
        _check_args_size(errs, f"{path}.custom_args", _MERGED_ARGS, _merged_args_size(req, p))
    if p.substitutions:
        size = vf.json_size(p.substitutions)
        _check_args_size(errs, f"{path}.substitutions", "substitutions", size)
    if p.send_at is not None:
        vf.check_send_at(errs, f"{path}.send_at", p.send_at, now)
    if p.dynamic_template_data:
        vf.check_template_data(errs, f"{path}.dynamic_template_data", p.dynamic_template_data)


def _check_expanded_sizes(errs: Errors, req: MailSendRequest) -> None:
    """Substitutions must not grow a message past the limit (a 310 KB request once made
    a gigabyte); the bound costs one str.count per key at most (model/size.py)."""
    extremes = growth_extremes(req.personalizations or ())
    if extremes is not None and extremes[1] == 0:
        return  # no substitution makes anything longer
    sizes = SizeBound(req)
    if extremes is not None and sizes.fits(extremes):
        return  # the common case, in one pass
    for i, p in enumerate(req.personalizations or ()):
        growing = growing_keys(p.substitutions)
        if growing is None:
            continue  # the common case: no value longer than its key, or no substitutions
        if (size := sizes.size(p, growing)) >= MAX_MESSAGE_BYTES:
            errs.append(
                FieldError(_too_big_after_substitution(size), f"personalizations.{i}.substitutions")
            )


def _too_big_after_substitution(size: int) -> str:
    return (
        f"With these substitutions the message could grow to {size:,} bytes; the total size "
        f"of a message must stay below {MAX_MESSAGE_BYTES:,} bytes (30 MB). Use shorter "
        "substitution values or fewer occurrences of their keys."
    )


def _check_recipients(errs: Errors, path: str, p: Personalization) -> None:
    """Address syntax, names, and one address at most once per personalization."""
    seen: set[str] = set()
    duplicate: str | None = None
    for kind, group in (("to", p.to), ("cc", p.cc), ("bcc", p.bcc)):
        for j, addr in enumerate(group or ()):
            if not vf.recipient_ok(addr):  # fast path: build the path only on error
                vf.check_address(errs, f"{path}.{kind}.{j}", addr, None, recipient=True)
            key = email_key(addr.email)
            if duplicate is None and key in seen:
                duplicate = _duplicate(addr.email, f"{path}.{kind}")
            seen.add(key)
    if duplicate is not None:
        errs.append(FieldError(duplicate, path))


def _duplicate(email: str, where: str) -> str:
    return (
        "Each email address in the personalization block should be unique between to, cc, "
        f"and bcc. We found the first duplicate instance of [{email}] in the {where} field."
    )


def _merged_args_size(req: MailSendRequest, p: Personalization) -> int:
    """JSON size of the personalization's custom_args after merging the global ones."""
    own = p.custom_args or {}
    return vf.json_size({**req.custom_args, **own} if req.custom_args else own)


def _check_args_size(errs: Errors, path: str, label: str, size: int) -> None:
    if size > vf.MAX_ARGS_BYTES:
        errs.append(
            FieldError(
                f"The {label} may not exceed {vf.MAX_ARGS_BYTES:,} bytes (JSON-encoded); "
                f"got {size:,} bytes.",
                path,
            )
        )


# -- from, reply_to, subject ---------------------------------------------------------------


def _check_sender(errs: Errors, req: MailSendRequest) -> None:
    if req.from_ is None:
        errs.append(FieldError(FROM_REQUIRED, "from"))
    else:
        vf.check_address(errs, "from", req.from_, "from")
    if req.reply_to is not None:
        vf.check_address(errs, "reply_to", req.reply_to, "reply_to")
        if req.reply_to_list is not None:
            errs.append(FieldError(REPLY_TO_BOTH, "reply_to_list"))
    if req.reply_to_list is not None:
        _check_reply_to_list(errs, req)


def _check_sender_headers(errs: Errors, req: MailSendRequest) -> None:
    """A Sender header (the personalization's, else the global one) must be the From."""
    reported: set[str] = set()
    shared = sender_header(req.headers)
    for i, p in enumerate(req.personalizations or ()):
        own = sender_header(p.headers) if p.headers else None
        found = own or shared
        if found is None:
            continue
        path = f"personalizations.{i}.headers.{found[0]}" if own else f"headers.{found[0]}"
        if path not in reported:
            before = len(errs)
            check_sender(errs, path, found[1], p.from_ or req.from_)
            if len(errs) > before:
                reported.add(path)


def _check_reply_to_list(errs: Errors, req: MailSendRequest) -> None:
    items = req.reply_to_list or []
    if len(items) > MAX_REPLY_TO:
        errs.append(
            FieldError(
                f"The reply_to_list may not have more than {MAX_REPLY_TO} items.", "reply_to_list"
            )
        )
        return
    seen: set[str] = set()
    for i, addr in enumerate(items):
        vf.check_address(errs, f"reply_to_list.{i}", addr, "reply_to_list")
        if addr.email.lower() in seen:
            errs.append(
                FieldError(
                    "Each email address in the reply_to_list should be unique.",
                    f"reply_to_list.{i}.email",
                )
            )
        seen.add(addr.email.lower())


def _check_subject(errs: Errors, req: MailSendRequest) -> None:
    vf.check_no_crlf(errs, "subject", "subject", req.subject)
    if req.subject or req.template_id:
        return
    if not all(p.subject for p in req.personalizations or ()):
        errs.append(FieldError(SUBJECT_REQUIRED, "subject"))


# -- the rest of the body ------------------------------------------------------------------


def _check_body(errs: Errors, req: MailSendRequest, now: float) -> None:
    vf.check_content(errs, req.content, req.template_id)
    if req.headers:
        vf.check_headers(errs, "headers", req.headers)
    if req.attachments:
        vf.check_attachments(errs, req.attachments)
    if req.categories:
        vf.check_categories(errs, req.categories)
    if req.custom_args:
        _check_args_size(errs, "custom_args", "custom_args", vf.json_size(req.custom_args))
    vf.check_send_at(errs, "send_at", req.send_at, now)
    if req.asm is not None:
        vf.check_asm(errs, req.asm)
    vf.check_ids(errs, req)
    if req.mail_settings is not None:
        vf.check_mail_settings(errs, req.mail_settings)


# -- total size (413) ----------------------------------------------------------------------


def message_size(req: MailSendRequest) -> int:
    """Bytes of content values plus decoded attachments (compare with MAX_MESSAGE_BYTES).

    Works on unvalidated requests: attachment sizes are computed from the base64 length,
    without decoding.
    """
    size = sum(len(c.value.encode()) for c in req.content or ())
    return size + sum(_decoded_len(a.content) for a in req.attachments or ())


def _decoded_len(b64: str) -> int:
    chars = len(b64) - b64.count("\n") - b64.count("\r") - b64.count(" ")
    tail = b64[-8:].rstrip()  # no copy of the whole (possibly huge) string
    padding = len(tail) - len(tail.rstrip("="))
    return max(0, chars * 3 // 4 - padding)


# -- JSON decoding errors --------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_STEP = re.compile(r"\.([A-Za-z0-9_]+)|\[(\d+)\]|\[\.\.\.\]")
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def decode_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> FieldError:
    """A decoder exception as a SendGrid-style error (``field`` like ``personalizations.0.to``)."""
    if isinstance(exc, NestedTooDeep):
        return FieldError(f"Bad Request: {exc}.")
    if not isinstance(exc, msgspec.ValidationError):
        return FieldError(f"Bad Request: the body is not valid JSON ({exc}).")
    text = str(exc)
    at = _AT.match(text)
    message, field = (at["msg"], _field_path(at["path"])) if at else (text, None)
    missing = _MISSING.match(message)
    if missing:
        name = missing["name"]
        return FieldError(f"The {name} parameter is required.", _join(field, name))
    return FieldError(_type_message(message), field)


def _field_path(path: str) -> str | None:
    parts = [m[1] or m[2] for m in _STEP.finditer(path) if m[1] or m[2]]
    return ".".join(parts) or None


def _join(field: str | None, name: str) -> str:
    return f"{field}.{name}" if field else name


def _type_message(message: str) -> str:
    m = _EXPECTED.match(message)
    if m is None:
        return message
    want = " or ".join(_json_type(t) for t in m["want"].split(" | ") if t != "null")
    return f"Invalid type. Expected: {want}, given: {_json_type(m['got'])}."


def _json_type(name: str) -> str:
    return _JSON_TYPES.get(name, name)
