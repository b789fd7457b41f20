"""Turn a validated send request into an :class:`AcceptBatch` (pure, no I/O).

One :class:`NewMessage` per personalization ``i`` (``sg_message_id`` =
``<x_message_id>.<node>.<i>``), its envelope recipients being to + cc + bcc de-duplicated
case-insensitively (first spelling and order kept). Every unique recipient gets exactly one
event: ``processed``, or ``dropped`` when ``suppressed`` names it. A personalization whose
recipients are all dropped yields its events but no message.

``suppressed`` is called once with every unique recipient of the request and returns a
mapping ``email -> reason`` (e.g. ``"Bounced Address"``) for those that must be dropped;
keys are matched case-insensitively. The dropped event carries that reason and status
``5.0.0``, as SendGrid's does.

The message's ``smtp_id`` is the Message-ID it is sent with, the same on every attempt: the
sender's own ``Message-ID`` header when it set one (the personalization's, else the global
one; checked at accept), else ``<X-Message-Id.index@host>``. ``host`` comes from
:func:`message_id_domain`; when no host name of the node is usable it is empty and each
message uses its From domain, which is the sender's own and never ``localhost``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from postline.model.domain import a_label, email_key
from postline.model.errors import FieldError
from postline.model.events import (
    DROPPED,
    DROPPED_STATUS,
    PROCESSED,
    EventRecord,
    make_event,
    message_meta,
)
from postline.model.ids import sg_message_id, smtp_id
from postline.model.mail import MailSendRequest, Personalization, encode_stored, find_header
from postline.spool.interface import AcceptBatch, NewMessage

Suppressed = Callable[[list[str]], Mapping[str, str]]


def expand(
    req: MailSendRequest,
    *,
    tenant: str,
    node: str,
    host: str,
    now: float,
    max_age: float,
    x_message_id: str,
    suppressed: Suppressed | None = None,
) -> AcceptBatch:
    personalizations = req.personalizations or []
    envelopes = [unique_recipients(p) for p in personalizations]
    ctx = _Context(req, tenant, now, _drops(envelopes, suppressed))
    messages: list[NewMessage] = []
    shared_id = find_header(req.headers, "message-id")
    for i, (p, rcpts) in enumerate(zip(personalizations, envelopes, strict=True)):
        sg_id = sg_message_id(x_message_id, node, i)
        custom = find_header(p.headers, "message-id") if p.headers else None
        custom = custom or shared_id
        smtp = custom.strip() if custom else smtp_id(x_message_id, i, host or _from_domain(req, p))
        kept = ctx.emit(p, rcpts, sg_id, smtp)
        if kept:
            messages.append(NewMessage(sg_id, smtp, encode_stored(p), kept, due_at(req, p, now)))
    body = encode_stored(req.body())
    return AcceptBatch(tenant, body, messages, ctx.events, created_at=now, expires_at=now + max_age)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_LOCAL_NAMES = frozenset({"localhost", "localdomain", "local", "invalid"})


def message_id_domain(configured: str, helo_name: str) -> str:
    """The right-hand side of generated Message-IDs: ``delivery.message_id_domain``, else
    the node's host name (``helo_name``, then the FQDN the system reports) when it is a
    dotted name that is not localhost; "" when none is, for the From domain of each message.

    A Message-ID ``@localhost`` (what a container's FQDN often is) is scored as spam and
    collides between nodes; the left-hand side (128 random bits) makes each id unique.
    """
    for name in (configured, helo_name, socket.getfqdn()):
        if host_usable(name):
            return name.rstrip(".").lower()
    return ""


def host_usable(name: str) -> bool:
    """A dotted host name that names this node to others (not localhost, .local, ...)."""
    name = name.rstrip(".").lower()
    labels = name.split(".")
    local = labels[0] in _LOCAL_NAMES or labels[-1] in _LOCAL_NAMES
    return _HOST.fullmatch(name) is not None and not local and not labels[-1].isdigit()


def _from_domain(req: MailSendRequest, p: Personalization) -> str:
    sender = p.from_ or req.from_
    domain = sender.email.rpartition("@")[2] if sender is not None else ""
    return a_label(domain) or "message-id.invalid"  # an IDN accept refused: not reached


def asm_groups(req: MailSendRequest) -> tuple[int, ...]:
    """The unsubscribe groups a request names, for the suppression lookup: (asm.group_id,
    *asm.groups_to_display), or () without ``asm``. The lookup drops group_id's members
    and raises UnknownGroups for any group the tenant lacks (:func:`unknown_groups`)."""
    if req.asm is None:
        return ()
    return (req.asm.group_id, *(req.asm.groups_to_display or ()))


def unknown_groups(req: MailSendRequest, missing: Sequence[int]) -> list[FieldError]:
    """The 400's errors for the groups of ``asm`` the tenant does not have."""
    if req.asm is None:
        return []
    gone = set(missing)
    errs = []
    if req.asm.group_id in gone:
        errs.append(FieldError(NO_GROUP.format(req.asm.group_id), "asm.group_id"))
    for i, group in enumerate(req.asm.groups_to_display or ()):
        if group in gone:
            errs.append(FieldError(NO_GROUP.format(group), f"asm.groups_to_display.{i}"))
    return errs


NO_GROUP = "There is no unsubscribe group {} (create it with POST /v3/asm/groups)."


def unique_recipients(p: Personalization) -> list[str]:
    """to + cc + bcc emails, de-duplicated case-insensitively, order kept."""
    seen: dict[str, str] = {}
    for group in (p.to, p.cc, p.bcc):
        for addr in group or ():
            seen.setdefault(email_key(addr.email), addr.email)
    return list(seen.values())


def due_at(req: MailSendRequest, p: Personalization, now: float) -> float:
    """When the message may first be attempted: send_at (personalization wins) or now."""
    send_at = send_at_of(req, p)
    return max(now, float(send_at)) if send_at is not None else now


def send_at_of(req: MailSendRequest, p: Personalization) -> int | None:
    """The personalization's send_at when set (even 0), else the request's."""
    return p.send_at if p.send_at is not None else req.send_at


def merged_custom_args(req: MailSendRequest, p: Personalization) -> dict[str, str]:
    """Global custom_args overridden by the personalization's."""
    return {**(req.custom_args or {}), **(p.custom_args or {})}


def _drops(envelopes: list[list[str]], suppressed: Suppressed | None) -> dict[str, str]:
    """Lower-cased email -> drop reason, asking ``suppressed`` once for the whole request."""
    if suppressed is None:
        return {}
    everyone: dict[str, str] = {}  # first spelling of each address
    for rcpts in envelopes:
        for email in rcpts:
            everyone.setdefault(email_key(email), email)
    answer = suppressed(list(everyone.values()))
    return {email_key(email): reason for email, reason in answer.items()}


@dataclass(slots=True)
class _Context:
    req: MailSendRequest
    tenant: str
    now: float
    drops: Mapping[str, str]
    events: list[EventRecord] = field(default_factory=list)

    def emit(self, p: Personalization, rcpts: list[str], sg_id: str, smtp: str) -> list[str]:
        """Append one event per recipient; return the recipients that were not dropped."""
        req = self.req
        args = merged_custom_args(req, p)
        processed = {"send_at": send_at_of(req, p) or 0}
        sender = p.from_ or req.from_
        asm = req.asm.group_id if req.asm is not None else None
        meta = message_meta(
            sender.email if sender else None, p.subject or req.subject, req.template_id, asm
        )
        kept: list[str] = []
        for email in rcpts:
            reason = self.drops.get(email_key(email))
            if reason is None:
                kept.append(email)
            extra = processed if reason is None else {"reason": reason, "status": DROPPED_STATUS}
            self.events.append(
                make_event(
                    PROCESSED if reason is None else DROPPED,
                    tenant=self.tenant,
                    email=email,
                    ts=self.now,
                    sg_message_id=sg_id,
                    smtp_id=smtp,
                    categories=req.categories,
                    custom_args=args,
                    extra=extra,
                    meta=meta,
                )
            )
        return kept
