"""RFC 3464 delivery status notifications: which recipients failed, with what status.

A DSN is a multipart/report (report-type=delivery-status) whose message/delivery-status
part holds one block of per-message fields, then one block per recipient (§2.2, §2.3).
Only ``Action: failed`` says something final about the address. ``delayed`` is a relay
still retrying: it sends a ``failed`` DSN later if it gives up, and this node already
recorded the message as delivered, so a ``deferred`` event after it would mislead;
``delivered``, ``relayed`` and ``expanded`` are successes. All of those are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message

from postline.inbound import report

_SMTP_CODE = re.compile(r"^\s*([245]\d\d)[\s-]")
_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str  # Original-Recipient when given (what we sent to), else Final-Recipient
    action: str  # failed, delayed, delivered, relayed, expanded (lower case)
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # the Diagnostic-Code text after its type, e.g. "550 5.1.1 no such user"
    remote_mta: str = ""

    def reply(self) -> tuple[int, str, str]:
        """The SMTP reply code, text and RFC 3463 status to classify.

        The code is the diagnostic's own when the remote MTA gave one (``smtp;``), else one
        implied by the status class. A multi-line reply (Gmail's ``550-5.1.1 ...``) loses
        the code repeated on each line. A vague Status (Exim's 5.0.0) yields to a more
        precise code in the diagnostic."""
        m = _SMTP_CODE.match(self.diagnostic)
        if m is None:
            code = 500 if self.status.startswith("5") else 400
            return code, self.diagnostic or f"{self.status} {self.action}", self.status
        code, text = int(m.group(1)), self.diagnostic[m.end() :].strip()
        given = _STATUS.match(text)
        repeat = rf"\s{code}[ -](?:{re.escape(given.group(1))}\s*)?" if given else rf"\s{code}-"
        text = " ".join(re.sub(repeat, " ", text).split())
        status = self.status
        if given and (not status or status.endswith(".0.0")):
            status = given.group(1)
        return code, text, status


@dataclass(slots=True)
class DeliveryReport:
    recipients: list[RecipientStatus]
    senders: list[str] = field(default_factory=list)  # return paths the report names
    message_id: str = ""  # Message-ID of the returned message, when it came back

    def failed(self) -> list[RecipientStatus]:
        return [r for r in self.recipients if r.action == "failed" and r.recipient]


def parse(msg: EmailMessage) -> DeliveryReport | None:
    """The report in ``msg``; None when it is not an RFC 3464 DSN."""
    if report.report_type(msg) != report.DELIVERY_STATUS:
        return None
    p = report.part(msg, "message/delivery-status")
    if p is None:
        return None
    blocks = report.field_blocks(p)
    if not blocks:
        return None
    per_message, per_recipient = blocks[0], blocks[1:]
    returned = report.returned_headers(msg)
    # Postfix names the original envelope sender (X-Postfix-Sender); the returned
    # headers carry it as Return-Path when the bouncing host had delivered locally.
    senders = [report.address_field(per_message.get("X-Postfix-Sender"))]
    senders += report.addresses(returned, "Return-Path")
    message_id = str(returned.get("Message-ID", "")).strip() if returned is not None else ""
    recipients = [_recipient(b) for b in per_recipient]
    return DeliveryReport(recipients, [s for s in senders if s], message_id)


def _recipient(block: Message) -> RecipientStatus:
    original = report.address_field(block.get("Original-Recipient"))
    final = report.address_field(block.get("Final-Recipient"))
    status = _STATUS.match(str(block.get("Status", "")))
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    return RecipientStatus(
        recipient=original or final,
        action=str(block.get("Action", "")).strip().lower(),
        status=status.group(1) if status else "",
        diagnostic=diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic,
        remote_mta=report.address_field(block.get("Remote-MTA")),
    )
