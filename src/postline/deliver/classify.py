"""Classify an SMTP reply or a connection failure into an outcome value.

Like Postfix's ``smtp_trouble.c`` every failure gets a scope (recipient, message,
session, site), and like KumoMTA's bounce classifier permanent failures are sorted by an
ordered table of rules. The categories are SendGrid's: a bounce has a ``type`` —
``"bounce"`` (the address is the problem) or ``"blocked"`` (the sender, the message or
the connection is) — and a ``bounce_classification``.

Rules, first match wins (``RULES``):

1. Unambiguous enhanced status codes (RFC 3463, RFC 7505 null MX, RFC 7293 RRVS,
   RFC 7372 authentication codes, Gmail's 5.7.25/5.7.26/5.7.28).
2. Text patterns typical of Gmail, Outlook/Microsoft 365, Yahoo/AOL, iCloud and common
   MTAs and blocklists — they decide where the code is vague (5.0.0, 5.4.1, 5.5.0,
   5.7.1, or no enhanced code at all).
3. The RFC 3463 subject of the enhanced code (X.1 address, X.2 mailbox, X.3 system,
   X.4 routing, X.5 protocol, X.6 content, X.7 policy).
4. The basic reply code (RFC 5321, RFC 7504).

Decisions:

* **Mailbox full** (X.2.2, "over quota"): RFC 3463 calls X.2.2 a persistent transient
  failure. A 4xx reply is deferred and retried. A 5xx reply is the receiver's final word
  on this message, so it bounces (``"bounce"``, "Mailbox Unavailable", as SendGrid
  reports it) — but ``suppression_list`` does not put the address on the bounce list:
  the mailbox may be emptied before the next send.
* **Message too large** (X.2.3, X.3.4, "size limit"): "Content", type ``"blocked"`` — the
  message as composed is refused, the address is fine.
* **Authentication and PTR failures** (X.7.20–X.7.27, Microsoft 5.7.509, SPF/DKIM/DMARC
  text): "Technical Failure" — the fix is the sender's DNS or signing configuration.
  The submission codes X.7.8–X.7.11 (RFC 4954) get no rule of their own: Yahoo answers
  "554 5.7.9 Message not accepted for policy reasons", a block.
* **Unclassified**: a 5xx no rule explains. Replied to RCPT (recipient scope) it is a
  ``"bounce"`` and goes on the bounce list, following RFC 5321 (a permanent negative
  reply to this recipient) and SendGrid (hard bounces are suppressed); at any wider
  scope it says nothing about the address, so it is ``"blocked"``.
* **Suppression** (``suppression_list``): ``"bounce"`` type → SendGrid's ``bounces`` list
  (suppresses later sends), except mailbox-full; ``"blocked"`` → the ``blocks`` list,
  which SendGrid records but does not suppress by default.
* **Throttling**: a 4xx reply is ``throttled`` when its code is 421, its enhanced code is
  4.7.x (policy deferrals are how Gmail, Yahoo and Microsoft say "slow down"), or its text
  says rate limit / too many connections / try again later / unusual volume — except
  greylisting, which asks only for a later retry. 421 closes the channel (RFC 5321
  §3.8), so its scope is at least ``SESSION``; connection-level failures are ``SITE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from postline.model.outcomes import Bounced, Deferred, Delivered, Scope

# Reply codes this module relies on, named after their code (STYLE habit 8).
R421_SERVICE_NOT_AVAILABLE = 421  # RFC 5321: closing transmission channel
R521_NO_MAIL_ACCEPTED = 521  # RFC 7504: this host does not accept mail
R556_DOMAIN_NO_MAIL = 556  # RFC 7504: the domain does not accept mail (null MX)

# SendGrid's bounce_classification values.
INVALID_ADDRESS = "Invalid Address"
MAILBOX_UNAVAILABLE = "Mailbox Unavailable"
REPUTATION = "Reputation"
CONTENT = "Content"
TECHNICAL_FAILURE = "Technical Failure"
FREQUENCY = "Frequency or Volume Too High"
UNCLASSIFIED = "Unclassified"

ADDRESS_CLASSES = frozenset({INVALID_ADDRESS, MAILBOX_UNAVAILABLE})  # type "bounce"

SuppressionList = Literal["bounces", "blocks"]


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), re.IGNORECASE)


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_GREYLIST = _rx(r"gr[ae]y-?list")
_QUOTA = _rx(
    r"mailbox (is )?full",
    r"over ?quota",
    r"quota (exceeded|exceed)",
    r"exceeds? (the |its |their )?(storage|quota)",
    r"insufficient (storage|space) for (user|mailbox)",
    r"mailbox size limit exceeded",
)
_SENDER = _rx(r"sender address rejected", r"sender domain", r"sender verify", r"return.path")
_INVALID = _rx(
    r"user unknown",
    r"unknown (user|recipient|address|mailbox|local.part)",
    r"no such (user|mailbox|recipient|address|account|person)",
    r"(does not|doesn't|not) exist",
    r"(recipient|mailbox|address|account) not found",
    r"invalid (recipient|mailbox|address|user)",
    r"not a valid (mailbox|user|recipient|address)",
    r"(address|user|recipient|mailbox) (is )?(unknown|invalid)",
    r"doesn'?t have an? \S+ account",
    r"no mailbox here",
    r"undeliverable address",
    r"addressee unknown",
    r"RecipientNotFound",
    r"unrouteable address",
)
_DISABLED = _rx(
    r"(mailbox|account|user) (is |has been )?(disabled|deactivated|inactive|suspended|closed)",
    r"mailbox (is )?unavailable",
    r"no longer (active|accepting|in use|available)",
)
_FREQUENCY = _rx(
    r"rate.?limit",
    r"too many (connections|concurrent|sessions|messages|mails|emails)",
    r"exceeded .{0,40}(rate|limit|volume)",
    r"sending (quota|limit)",
    r"throttl",
    r"unusual rate",
    r"unexpected volume",
    r"receiving mail at a rate",
    r"(try|please try|come back) (again )?later",
    r"temporarily deferred",
    r"slow down",
)
_REPUTATION = _rx(
    r"spamhaus|spamcop|barracuda|sorbs|\bRBL\b|DNSBL|\bURIBL\b|\bSURBL\b",
    r"black ?list|block ?list|(is|was|are|been) listed (on|in|at|by)",
    r"reputation",
    r"banned",
    r"\bblock(ed)? (using|by|for|from|due)",
    r"\b(client host|IP)\s+\[?[\d.:a-f]+\]?\s+(is\s+)?(blocked|rejected|not allowed)",
    r"your IP (address )?(is |has been )?(blocked|not allowed)",
    r"poor (sender )?reputation",
    r"\b(SC|OU|DY)-00\d\b",  # Outlook.com/Hotmail IP block codes
)
_SIZE = _rx(
    r"message (size|length)",
    r"too (big|large)",
    r"size limit",
    r"exceeds? .{0,30}(size|limit for message)",
)
_CONTENT = _rx(r"spam", r"unsolicited", r"content", r"phish", r"virus", r"malware", r"bulk mail")
_TECHNICAL = _rx(
    r"rela(y|ying) (access )?(denied|not permitted|prohibited)",
    r"unable to relay",
    r"\bSPF\b|\bDKIM\b|\bDMARC\b",
    r"\bPTR\b|reverse (DNS|lookup)",
    r"\bTLS\b|STARTTLS|encryption",
    r"authentication (required|failed)",
    r"routing loop|too many hops|hop count",
    r"syntax",
)
_POLICY = _rx(r"blocked", r"denied", r"refused", r"policy", r"not accepted", r"prohibit")


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: matches a 5xx reply; either field may be omitted."""

    classification: str
    status: re.Pattern[str] | None = None  # full match on "class.subject.detail"
    text: re.Pattern[str] | None = None  # search in the reply text

    def matches(self, status: str, text: str) -> bool:
        if self.status is not None and not self.status.fullmatch(status):
            return False
        return self.text is None or self.text.search(text) is not None


def _st(pattern: str) -> re.Pattern[str]:
    return re.compile(r"[45]\." + pattern)


RULES: tuple[Rule, ...] = (
    # 1. Unambiguous enhanced codes.
    Rule(INVALID_ADDRESS, _st(r"1\.(1|2|3|4|6|10)")),  # bad mailbox, system, syntax; null MX
    Rule(TECHNICAL_FAILURE, _st(r"1\.(7|8)")),  # our sender address or its domain is bad
    Rule(MAILBOX_UNAVAILABLE, _st(r"2\.(1|2)")),  # disabled; full (RFC 3463 X.2.2)
    Rule(CONTENT, _st(r"(2\.3|3\.4)")),  # message length exceeds a limit
    Rule(INVALID_ADDRESS, _st(r"7\.(17|18)")),  # RRVS: mailbox or domain owner changed
    Rule(MAILBOX_UNAVAILABLE, _st(r"7\.13")),  # user account disabled
    Rule(TECHNICAL_FAILURE, _st(r"7\.(2[0-7]|509)")),  # SPF, DKIM, DMARC, PTR, null-MX sender
    Rule(FREQUENCY, _st(r"7\.28")),  # mail flood / unusual rate
    # 2. Text, where the code is vague or absent.
    Rule(INVALID_ADDRESS, _st(r"4\.1"), _rx(r"recipient address rejected: access denied")),
    Rule(TECHNICAL_FAILURE, None, _SENDER),
    Rule(FREQUENCY, None, _FREQUENCY),  # before quota: "daily sending quota exceeded"
    Rule(MAILBOX_UNAVAILABLE, None, _QUOTA),
    Rule(REPUTATION, None, _REPUTATION),
    Rule(INVALID_ADDRESS, None, _INVALID),
    Rule(MAILBOX_UNAVAILABLE, None, _DISABLED),
    Rule(CONTENT, None, _SIZE),
    Rule(CONTENT, None, _CONTENT),
    Rule(TECHNICAL_FAILURE, None, _TECHNICAL),
    # 3. The RFC 3463 subject.
    Rule(INVALID_ADDRESS, _st(r"1\.\d+")),
    Rule(MAILBOX_UNAVAILABLE, _st(r"2\.\d+")),
    Rule(TECHNICAL_FAILURE, _st(r"[345]\.\d+")),
    Rule(CONTENT, _st(r"6\.\d+")),
    Rule(REPUTATION, _st(r"7\.\d+")),
    # 4. Text that only says "no" without saying why: a block.
    Rule(REPUTATION, None, _POLICY),
)

_BY_CODE = {R556_DOMAIN_NO_MAIL: INVALID_ADDRESS, R521_NO_MAIL_ACCEPTED: TECHNICAL_FAILURE}


def classify_reply(
    code: int,
    text: str,
    *,
    enhanced: str | None = None,
    scope: Scope = Scope.RECIPIENT,
    ip: str = "",
    tls: bool = False,
) -> Delivered | Deferred | Bounced:
    """The outcome of a final reply; ``scope`` is what the reply applied to.

    ``enhanced`` is the RFC 3463 status when parsed already; otherwise it is read from
    the start of ``text``. ``scope`` is RECIPIENT for a reply to RCPT, MESSAGE for DATA
    and the end of data, SESSION for the greeting, EHLO, STARTTLS and MAIL.
    """
    status = enhanced or _enhanced_in(text) or ""
    response = _response(code, status, text)
    if 200 <= code < 300:
        return Delivered(response, tls=tls, ip=ip)
    if 500 <= code < 600:
        return _bounce(code, status, text, response, scope, ip, tls)
    if code == R421_SERVICE_NOT_AVAILABLE and scope is not Scope.SITE:
        scope = Scope.SESSION
    if not 400 <= code < 500:
        scope = Scope.SESSION  # not a valid final reply: a protocol failure of the session
    return Deferred(response, scope, _throttled(code, status, text), ip)


def classify_connection_failure(reason: str, *, ip: str = "") -> Deferred:
    """A failure before any reply: refused, timed out, reset, TLS handshake, DNS."""
    return Deferred(reason, Scope.SITE, _FREQUENCY.search(reason) is not None, ip)


def bounce_class(code: int, status: str, text: str) -> str:
    """The SendGrid bounce_classification of a 5xx reply, by the rule table."""
    status = _normalize(code, status)
    for rule in RULES:
        if rule.matches(status, text):
            return rule.classification
    return _BY_CODE.get(code, UNCLASSIFIED)


def suppression_list(bounce: Bounced) -> SuppressionList | None:
    """Which SendGrid list the bounced address goes on (``blocks`` does not suppress)."""
    if bounce.type == "blocked":
        return "blocks"
    if _is_quota(bounce.status, bounce.response):
        return None
    return "bounces"


def _bounce(
    code: int, status: str, text: str, response: str, scope: Scope, ip: str, tls: bool
) -> Bounced:
    classification = bounce_class(code, status, text)
    type_ = _bounce_type(classification, scope)
    return Bounced(response, _normalize(code, status), type_, classification, scope, tls, ip)


def _bounce_type(classification: str, scope: Scope) -> str:
    if classification in ADDRESS_CLASSES:
        return "bounce"
    if classification == UNCLASSIFIED and scope is Scope.RECIPIENT:
        return "bounce"
    return "blocked"


def _throttled(code: int, status: str, text: str) -> bool:
    if code == R421_SERVICE_NOT_AVAILABLE:
        return True
    if _GREYLIST.search(text):
        return False
    return status.startswith("4.7.") or _FREQUENCY.search(text) is not None


def _is_quota(status: str, response: str) -> bool:
    return status.endswith(".2.2") or _QUOTA.search(response) is not None


def _enhanced_in(text: str) -> str | None:
    m = _ENHANCED.match(text)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else None


def _normalize(code: int, status: str) -> str:
    """The status with its class digit agreeing with the reply code (RFC 3463 §2)."""
    parts = status.split(".")
    if len(parts) != 3:
        return f"{code // 100}.0.0"
    return f"{code // 100}.{parts[1]}.{parts[2]}"


def _response(code: int, status: str, text: str) -> str:
    text = " ".join(text.split())
    if status and not text.startswith(status):
        text = f"{status} {text}"
    return f"{code} {text}".rstrip()
