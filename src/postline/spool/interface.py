"""The Spool: the one interface between the core and durable message storage.

Nine calls, two backends (embedded SQLite now, NATS JetStream in cluster mode; see
ARCHITECTURE.md for how each call maps onto JetStream). Semantics every backend keeps:

* ``accept`` returns only once the batch (body, messages, deliveries, events) is durable.
  Backends group-commit concurrent batches; a batch is all-or-nothing. A ``body_file`` that
  is missing, unreadable, not a regular file or not ``size`` octets makes ``accept`` raise
  ValueError and stores nothing; the file is read only while ``accept`` runs. With
  ``drop_suppressed`` the spool drops listed recipients in the same transaction
  (spool/drops.py).
* ``lease`` hands out due deliveries of one queue (tenant x recipient domain) with a
  visibility timeout: a lease not settled by ``lease_until`` becomes due again
  (at-least-once, like JetStream's ack_wait).
* ``settle`` records attempt outcomes: terminal ones remove the delivery (and the body when
  no delivery needs it any more); deferrals make it due again at ``retry_at``. The events
  of a settle are appended in the same transaction.
* ``release`` returns leased work without an attempt (shutdown, suspended site, full window).
* ``load`` reads the stored message (shared body + personalization) for rendering.
* ``queues`` lists the non-empty queues with their next due time (the scheduler's index,
  rebuilt at start; afterwards kept current in memory); ``next_due`` is one queue's.
* ``expire`` settles every delivery whose max age has passed, whatever its state.
* ``counts`` counts deliveries by state and terminal outcomes since creation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from postline.model.events import EventRecord

# Suppression list -> the reason of the ``dropped`` event, in SendGrid's words, for the lists
# that make the accept stage drop an address. Blocks are not on it: SendGrid keeps sending
# to blocked addresses. Shared by every backend.
DROP_REASONS = {
    "bounces": "Bounced Address",
    "spam_reports": "Spam Reporting Address",
    "unsubscribes": "Unsubscribed Address",
    "invalid_emails": "Invalid",
}
# The reason of a recipient dropped because it unsubscribed from the message's group
# (``asm.group_id``): SendGrid says "Unsubscribed Address" for group and global alike.
GROUP_DROP_REASON = "Unsubscribed Address"

# ``expire`` leases what it returns for this long, so that a second call does not hand out
# the same deliveries while the caller settles the first ones.
EXPIRE_LEASE = 60.0


class UnknownGroups(ValueError):
    """Unsubscribe groups a batch names (``asm``) that the tenant does not have; the batch
    is not stored. Consequence: a 400 naming the field (HTTP), a 550 (relay)."""

    def __init__(self, group_ids: Sequence[int]) -> None:
        super().__init__(f"no unsubscribe group {', '.join(map(str, group_ids))}")
        self.group_ids = tuple(group_ids)


class SpoolUnavailable(Exception):
    """The spool cannot take writes now (disk full, read-only, I/O error).

    Consequence: the doors answer 503 (HTTP, with Retry-After) or 452 (SMTP) and
    acknowledge nothing.
    """

    def __init__(self, reason: str, retry_after: int = 30) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class NewMessage:
    """One personalization: one message, one delivery per envelope recipient."""

    sg_message_id: str
    smtp_id: str
    personalization: bytes  # msgpack of model.mail.Personalization
    recipients: list[str]  # envelope recipients (to, cc, bcc), already de-duplicated
    due_at: float  # send_at, or the accept time


@dataclass(slots=True, frozen=True)
class BodyFile:
    """A body too large to hold in memory (a relayed message of up to 30 MB): a file the
    caller wrote and owns. The spool copies it in bounded chunks inside ``accept`` and never
    reads it whole; the caller removes the file once ``accept`` has returned or raised."""

    path: str
    size: int  # octets in the file, all of which are the body


@dataclass(slots=True)
class AcceptBatch:
    """Everything one request produced; written in one transaction."""

    tenant: str
    # msgpack of model.mail.MailBody, or a relayed message as received (model/relay.py),
    # stored once for all messages. b"" when ``body_file`` holds it.
    body: bytes
    messages: list[NewMessage]
    events: list[EventRecord]  # processed / dropped
    created_at: float
    expires_at: float  # created_at + max_age
    body_file: BodyFile | None = None  # the body is this file's content (``body`` is b"")
    # The spool drops suppressed recipients itself, inside the accept transaction
    # (spool/drops.py), and changes ``messages`` and ``events`` in place to say so.
    drop_suppressed: bool = False
    # With ``drop_suppressed``: the unsubscribe group of the mail (its members are dropped
    # too) and the groups it offers, all of which must exist (else UnknownGroups).
    asm_group_id: int | None = None
    asm_groups_to_display: tuple[int, ...] = ()

    @property
    def body_size(self) -> int:
        return self.body_file.size if self.body_file is not None else len(self.body)


@dataclass(slots=True)
class Lease:
    delivery_id: int
    message_id: int
    tenant: str
    rcpt: str
    domain: str
    attempts: int  # attempts made before this lease
    created_at: float
    expires_at: float
    sg_message_id: str


class Settlement(enum.Enum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    DEFERRED = "deferred"


@dataclass(slots=True)
class Settle:
    lease: Lease
    settlement: Settlement
    event: EventRecord | None = None
    retry_at: float = 0.0  # only for DEFERRED
    suppress: tuple[str, str, str] | None = None  # (list, reason, status) e.g. ("bounces", ...)


@dataclass(slots=True, frozen=True)
class Suppression:
    """An address onto a list outside any settle (``record``: asynchronous bounces, ARF)."""

    tenant: str
    list_name: str  # bounces, blocks, spam_reports, unsubscribes, invalid_emails
    email: str
    reason: str = ""
    status: str = ""
    created: float = 0.0


@dataclass(slots=True)
class StoredMessage:
    message_id: int
    sg_message_id: str
    smtp_id: str
    tenant: str
    body: bytes
    personalization: bytes


@dataclass(slots=True, frozen=True)
class QueueInfo:
    tenant: str
    domain: str
    next_due: float
    size: int


@dataclass(slots=True)
class Counts:
    queued: int = 0  # waiting, never attempted
    deferred: int = 0  # waiting after a temporary failure
    inflight: int = 0  # leased
    delivered: int = 0
    bounced: int = 0
    expired: int = 0
    dropped: int = 0
    bodies: int = 0
    messages: int = 0
    events: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)


class Spool(Protocol):
    async def accept(self, batch: AcceptBatch) -> None: ...

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]: ...

    async def settle(self, settles: Sequence[Settle]) -> None: ...

    async def release(self, leases: Sequence[Lease], due_at: float) -> None: ...

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]: ...

    async def queues(self, now: float) -> list[QueueInfo]: ...

    async def next_due(self, tenant: str, domain: str) -> float | None: ...

    async def expire(self, now: float, limit: int) -> list[Lease]: ...

    async def counts(self) -> Counts: ...
