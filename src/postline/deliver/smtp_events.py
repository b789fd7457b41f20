"""What the SMTP client reports: its events, and the replies of one mail transaction.

:class:`~postline.deliver.smtp_protocol.ClientProtocol` queues these for the adapter,
which takes them from :meth:`~postline.deliver.smtp_protocol.ClientProtocol.next_event`:
:class:`Established` when the session is ready for transactions, :class:`StartTls` when
the adapter must do the TLS handshake, :class:`TransactionDone` with a
:class:`Transaction` for each message, :class:`ResetDone` and :class:`Closed`. Frozen
values, made once per event; which reply decided a recipient's fate is
:meth:`Transaction.outcome`, and what that fate means is :mod:`postline.deliver.classify`'s
job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from postline.deliver.replies import Reply

__all__ = [
    "Closed",
    "Established",
    "Event",
    "ResetDone",
    "StartTls",
    "Transaction",
    "TransactionDone",
]


@dataclass(frozen=True, slots=True)
class Transaction:
    """The replies of one mail transaction.

    ``rcpts[i]`` answers ``recipients[i]``: the RCPT reply, or MAIL's refusal when MAIL was
    refused (the RCPT replies are then only "need MAIL command"). ``data`` is the reply
    to the message content, or DATA's own refusal; None when DATA was not sent (no
    recipient accepted). :meth:`outcomes` picks, per recipient, the reply that decided.
    """

    mail_from: str
    recipients: tuple[str, ...]
    mail: Reply
    rcpts: tuple[Reply, ...]
    data: Reply | None
    tls: bool = False

    def outcome(self, i: int) -> tuple[Reply, bool]:
        """The reply that decided recipient ``i``, and whether it was about that recipient
        alone (MAIL or RCPT refused it) rather than the whole message (DATA's reply)."""
        reply = self.rcpts[i]
        if reply.positive and self.data is not None:
            return self.data, False
        return reply, True

    def outcomes(self) -> list[tuple[str, Reply]]:
        """Each recipient with the reply that decided its fate."""
        return [(rcpt, self.outcome(i)[0]) for i, rcpt in enumerate(self.recipients)]

    @property
    def delivered(self) -> list[str]:
        return [rcpt for rcpt, r in self.outcomes() if r.code < 300]


@dataclass(frozen=True, slots=True)
class Established:
    """The session is ready for transactions."""

    extensions: Mapping[str, str]
    tls: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """The server agreed to STARTTLS: do the handshake, then call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class TransactionDone:
    transaction: Transaction


@dataclass(frozen=True, slots=True)
class ResetDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class Closed:
    reply: Reply | None  # QUIT's reply, None when the server just closed


Event = Established | StartTls | TransactionDone | ResetDone | Closed
