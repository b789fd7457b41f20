"""Rules for the custom headers a sender sets (``headers``, ``personalizations[].headers``).

What a custom header does on the wire (issue 12):

* ``Message-ID`` is kept: it replaces the generated one (libraries set it to thread
  replies) and is the ``smtp-id`` of the message's events. It must be ``<left@right>``
  (RFC 5322 §3.6.4), ASCII, one line.
* ``Date`` is kept when it is an RFC 5322 §3.3 date (``Tue, 02 Jan 2024 03:04:05 +0000``):
  the author's application knows best when the message was complete (§3.6.1: the Date is
  the time the creator finished it, which can be before the request). A malformed Date is
  refused, never passed on: spam filters score it and some clients sort by it.
* ``Sender`` (RFC 5322 §3.6.2) names who transmitted the message for its author. Postline
  has no sending identities yet, so nothing tells which Senders a tenant may claim: a
  Sender is kept only when it repeats the From address, else refused.
* Trace and authentication fields a recipient must only ever see from the servers on the
  way (``Return-Path``, ``Received``, ``DKIM-Signature``, ``Authentication-Results``,
  ``ARC-*``), ``X-SMTPAPI`` (SendGrid's SMTP instructions, which must never reach a
  recipient) and ``MIME-Version`` (written by Postline) are refused with a 400 naming them:
  refusing is clearer than dropping what the user asked for.

No substitution is made in these four values: they are checked here as they will be sent.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping

from postline.model.errors import FieldError
from postline.model.mail import EmailAddress, mailbox_of

Errors = list[FieldError]

MAX_MESSAGE_ID = 900  # "Message-ID: " + the id within a 998-octet line

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
# RFC 5322 §3.6.4 msg-id: "<" dot-atom-text "@" (dot-atom-text / no-fold-literal) ">"
_MSG_ID = re.compile(rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])>")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# RFC 5322 §3.3 date-time without the obsolete forms (zone names, 2-digit years, comments)
_DATE = re.compile(
    r"(?:(?P<dow>[A-Za-z]{3}) *, *)?(?P<day>\d{1,2}) +(?P<mon>[A-Za-z]{3}) +(?P<year>\d{4})"
    r" +(?P<h>\d\d):(?P<m>\d\d)(?::(?P<s>\d\d))? +(?P<zone>[+-]\d{4})"
)

MESSAGE_ID = (
    "The Message-ID header must be one message id in angle brackets, such as "
    f"<20240102.1234@mail.example.com> (RFC 5322 §3.6.4), of at most {MAX_MESSAGE_ID} ASCII "
    "characters; remove the header to have Postline generate one."
)
DATE = (
    "The Date header must be an RFC 5322 date such as 'Tue, 02 Jan 2024 03:04:05 +0000' "
    "(day and month in English, a four-digit year, a numeric time zone); remove the header "
    "to have Postline use the time the request was accepted."
)
SENDER_PARSE = "The Sender header must be one address, such as 'Name <name@example.com>'."
_TRACE = (
    "The header {name} is written by the servers a message passes through, never by its "
    "sender; remove it."
)
REFUSED = {
    "return-path": (
        "The header Return-Path is written by the receiving server from the envelope sender; "
        "remove it."
    ),
    "x-smtpapi": (
        "The header X-SMTPAPI holds SendGrid SMTP API instructions, which the v3 API takes as "
        "fields (personalizations, categories, custom_args, send_at); remove it."
    ),
    "mime-version": "The header MIME-Version is written by Postline; remove it.",
    "authentication-results": _TRACE,
    "arc-seal": _TRACE,
    "arc-message-signature": _TRACE,
    "arc-authentication-results": _TRACE,
}


def check_special(errs: Errors, path: str, name: str, value: str) -> None:
    """Errors for one custom header with a rule of its own (``path`` names the header)."""
    lower = name.lower()
    refused = REFUSED.get(lower)
    if refused is not None:
        errs.append(FieldError(refused.format(name=name), path))
    elif lower == "message-id" and not message_id_ok(value):
        errs.append(FieldError(MESSAGE_ID, path))
    elif lower == "date" and not date_ok(value):
        errs.append(FieldError(DATE, path))


def message_id_ok(value: str) -> bool:
    value = value.strip()
    return len(value) <= MAX_MESSAGE_ID and _MSG_ID.fullmatch(value) is not None


def date_ok(value: str) -> bool:
    """An RFC 5322 date-time that names a real instant (and the right day of the week)."""
    m = _DATE.fullmatch(value.strip())
    if m is None or m["mon"].lower() not in _MONTHS:
        return False
    year, month, day = int(m["year"]), _MONTHS.index(m["mon"].lower()) + 1, int(m["day"])
    hour, minute, second = int(m["h"]), int(m["m"]), int(m["s"] or 0)
    zone = m["zone"]
    if year < 1900 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    if hour > 23 or minute > 59 or second > 60 or int(zone[3:]) > 59:  # 60: a leap second
        return False
    dow = m["dow"]
    return dow is None or dow.lower() == _DAYS[calendar.weekday(year, month, day)]


def check_sender(errs: Errors, path: str, value: str, author: EmailAddress | None) -> None:
    """A Sender is kept only when it is the From address (``author``) of the message."""
    sender = mailbox_of(value)
    if sender is None:
        errs.append(FieldError(SENDER_PARSE, path))
    elif author is not None and sender.email.lower() != author.email.lower():
        errs.append(FieldError(_sender_not_from(author.email), path))


def _sender_not_from(author: str) -> str:
    return (
        "Postline has no sending identities yet, so a Sender header may only repeat the From "
        f"address ({author}); remove the header or set it to the From address."
    )


def sender_header(headers: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(name as written, value) of the Sender header among ``headers``, if any."""
    for key, value in (headers or {}).items():
        if key.lower() == "sender":
            return key, value
    return None
