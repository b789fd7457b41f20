"""A message for the bounce domain → events and suppressions (decide), then the spool.

* RFC 3464 DSN, ``Action: failed`` → a ``bounce`` event per failed recipient, classified
  like a synchronous bounce (deliver/classify.py) and suppressed the same way (hard
  bounce → ``bounces``, block → ``blocks``, mailbox full → none). A failed 4.x.x (a relay
  that gave up retrying) is a bounce that suppresses nothing, like our own expiry.
* RFC 5965 complaint → a ``spamreport`` event and the address on ``spam_reports``.
* Anything else (auto-replies, delayed DSNs, not-spam reports) is ignored.

The message is found through the VERP token (deliver/verp.py) of the first
``bounces+`` address among: the envelope recipient (``--recipient``), Delivered-To,
X-Original-To, Envelope-To, To, then the return paths the report itself names. A token
that does not verify refuses the message and records nothing.

The async bounce event carries what the token names (tenant, sg_message_id) and what the
DSN says; the message's categories and custom args are not in it, since the spool drops
a message once delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from postline.deliver import classify
from postline.deliver.verp import BadToken, MessageRef, is_verp
from postline.inbound import arf, dsn, report
from postline.model.events import BOUNCE, EventRecord, make_event
from postline.model.outcomes import Bounced, Scope
from postline.spool.interface import Suppression

# sysexits.h codes, which Postfix's pipe(8) maps to a retry or a bounce.
EX_OK = 0
EX_NOUSER = 67  # the token is missing or forged: bounce, never retry
EX_TEMPFAIL = 75  # the spool cannot be written now: the MTA keeps the message and retries
EX_CONFIG = 78

SPAMREPORT = "spamreport"
SPAM_REPORTS = "spam_reports"  # SendGrid's list name
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")

Verify = Callable[[str], MessageRef]


@dataclass(slots=True)
class Decision:
    code: int
    line: str  # one line for the MTA's log (and the bounce of a refused message)
    events: list[EventRecord] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)


def decide(raw: bytes, envelope: list[str], verify: Verify, now: float) -> Decision:
    msg = report.parse(raw)
    delivery = dsn.parse(msg)
    if delivery is not None:
        failed = delivery.failed()
        if not failed:
            return Decision(EX_OK, "ignored: a DSN without failed recipients")
        candidates = envelope + report.addresses(msg, *_ENVELOPE_HEADERS) + delivery.senders
        return _with_ref(candidates, verify, lambda ref: _bounces(ref, delivery, failed, now))
    feedback = arf.parse(msg)
    if feedback is not None:
        if not feedback.is_complaint() or not feedback.recipients:
            what = feedback.feedback_type or "untyped"
            return Decision(EX_OK, f"ignored: a {what} feedback report naming no complainant")
        candidates = envelope + feedback.senders + report.addresses(msg, *_ENVELOPE_HEADERS)
        return _with_ref(candidates, verify, lambda ref: _complaint(ref, feedback, now))
    return Decision(EX_OK, "ignored: neither a delivery status notification nor an ARF report")


def _with_ref(
    candidates: list[str], verify: Verify, build: Callable[[MessageRef], Decision]
) -> Decision:
    verp = next((a for a in candidates if is_verp(a)), None)
    if verp is None:
        line = "refused: no bounces+<token> address in the envelope recipient, To or the report"
        return Decision(EX_NOUSER, line)
    try:
        return build(verify(verp))
    except BadToken as exc:
        return Decision(EX_NOUSER, f"refused: {exc}; nothing recorded")


def _bounces(
    ref: MessageRef, delivery: dsn.DeliveryReport, failed: list[dsn.RecipientStatus], now: float
) -> Decision:
    out = Decision(EX_OK, "")
    for r in failed:
        extra, suppress = _bounce(r)
        out.events.append(_event(BOUNCE, ref, r.recipient, now, delivery.message_id, extra))
        if suppress is not None:
            reason, status = extra["reason"], extra["status"]
            out.suppressions.append(
                Suppression(ref.tenant, suppress, r.recipient, reason, status, now)
            )
    rcpts = ", ".join(r.recipient for r in failed)
    out.line = f"recorded: bounce of {rcpts} for {ref.sg_message_id} (tenant {ref.tenant})"
    return out


def _bounce(r: dsn.RecipientStatus) -> tuple[dict[str, str], str | None]:
    code, text, status = r.reply()
    outcome = classify.classify_reply(code, text, enhanced=status or None, scope=Scope.RECIPIENT)
    if isinstance(outcome, Bounced):
        extra = {"type": outcome.type, "reason": outcome.response, "status": outcome.status}
        extra["bounce_classification"] = outcome.classification
        return extra, classify.suppression_list(outcome)
    # A final failure with a transient status (e.g. Postfix's 4.4.1 "gave up"): the
    # address was never refused, so it is reported and not suppressed.
    status = status or f"{code // 100}.0.0"
    extra = {"type": "bounce", "reason": f"{code} {text}", "status": status}
    extra["bounce_classification"] = classify.bounce_class(code, status, text)
    return extra, None


def _complaint(ref: MessageRef, feedback: arf.FeedbackReport, now: float) -> Decision:
    out = Decision(EX_OK, "")
    for rcpt in feedback.recipients:
        out.events.append(_event(SPAMREPORT, ref, rcpt, now, feedback.message_id, {}))
        out.suppressions.append(Suppression(ref.tenant, SPAM_REPORTS, rcpt, created=now))
    who = ", ".join(feedback.recipients)
    out.line = f"recorded: spam report by {who} for {ref.sg_message_id} (tenant {ref.tenant})"
    return out


def _event(
    kind: str, ref: MessageRef, email: str, now: float, message_id: str, extra: dict[str, str]
) -> EventRecord:
    # The returned Message-ID is the smtp-id when it is this message's (it names the
    # X-Message-Id); anything else in a report is not ours to repeat.
    smtp_id = message_id if ref.x_message_id in message_id else ""
    return make_event(
        kind,
        tenant=ref.tenant,
        email=email,
        ts=now,
        sg_message_id=ref.sg_message_id,
        smtp_id=smtp_id,
        extra=extra,
    )
