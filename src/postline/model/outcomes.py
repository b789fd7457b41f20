"""Outcomes of a delivery attempt, as values (Postfix's smtp_trouble.c scopes).

The delivery engine turns every SMTP reply, timeout or connection failure into one of
these; the scheduler decides what to do with it (retry when, suspend the site, record).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Scope(enum.Enum):
    """How far a failure reaches: one recipient, the whole message, the session or the site."""

    RECIPIENT = "recipient"
    MESSAGE = "message"
    SESSION = "session"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class Delivered:
    response: str
    tls: bool = False
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Deferred:
    response: str
    scope: Scope = Scope.RECIPIENT
    throttled: bool = False  # the reply asked us to slow down (421, "too many connections")
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Bounced:
    response: str
    status: str  # enhanced status code, e.g. "5.1.1"
    type: str  # "bounce" (hard) or "blocked" (SendGrid's two bounce types)
    classification: str  # SendGrid bounce_classification
    scope: Scope = Scope.RECIPIENT
    tls: bool = False
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Expired:
    response: str  # the last temporary failure seen


Outcome = Delivered | Deferred | Bounced | Expired
