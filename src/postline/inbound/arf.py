"""RFC 5965 abuse reports (ARF): a recipient marked the message as spam.

A multipart/report (report-type=feedback-report): a human-readable part, a
message/feedback-report part (``Feedback-Type``, ``Original-Mail-From``,
``Original-Rcpt-To``, ...), then the message or its headers. Feedback loops often redact
the recipient; then the returned message's To is the best remaining clue, and a report
that names nobody is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage

from postline.inbound import report

# Feedback types that are complaints about the message (RFC 5965 §7.3); "not-spam" and
# "virus" are not a recipient asking to stop.
COMPLAINTS = frozenset({"abuse", "fraud", "other"})


@dataclass(slots=True)
class FeedbackReport:
    feedback_type: str  # lower case: abuse, fraud, not-spam, virus, other, auth-failure
    recipients: list[str]  # who complained
    senders: list[str] = field(default_factory=list)  # return paths the report names
    user_agent: str = ""
    message_id: str = ""

    def is_complaint(self) -> bool:
        return self.feedback_type in COMPLAINTS


def parse(msg: EmailMessage) -> FeedbackReport | None:
    """The report in ``msg``; None when it is not an ARF report."""
    if report.report_type(msg) != report.FEEDBACK_REPORT:
        return None
    p = report.part(msg, "message/feedback-report")
    blocks = report.field_blocks(p) if p is not None else []
    if not blocks:
        return None
    fields = blocks[0]
    returned = report.returned_headers(msg)
    rcpts = [report.address_field(v) for v in fields.get_all("Original-Rcpt-To") or []]
    rcpts = [r for r in rcpts if "@" in r] or report.addresses(returned, "To")[:1]
    senders = [report.address_field(fields.get("Original-Mail-From"))]
    senders += report.addresses(returned, "Return-Path")
    message_id = str(returned.get("Message-ID", "")).strip() if returned is not None else ""
    return FeedbackReport(
        feedback_type=str(fields.get("Feedback-Type", "")).strip().lower(),
        recipients=rcpts,
        senders=[s for s in senders if s],
        user_agent=str(fields.get("User-Agent", "")).strip(),
        message_id=message_id,
    )
