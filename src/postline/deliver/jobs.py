"""Leases → jobs: one job per message (and domain), with what every event of it carries.

A job is made for every lease, whatever its stored row holds: a row that is missing or
cannot be decoded still becomes a job, which fails to render and is bounced (issue 10: a
decode error here once stranded every lease of the batch for an hour).
"""

from __future__ import annotations

from collections import defaultdict

from postline.model.mail import decode_body, decode_personalization
from postline.schedule.ready import Job, MessageMeta
from postline.spool.interface import Lease, Spool, StoredMessage


async def load_jobs(spool: Spool, leases: list[Lease], now: float) -> list[Job]:
    """The jobs of ``leases`` (grouped by message); every lease is in exactly one."""
    if not leases:
        return []
    by_msg: dict[int, list[Lease]] = defaultdict(list)
    for lease in leases:
        by_msg[lease.message_id].append(lease)
    stored = {m.message_id: m for m in await spool.load(list(by_msg))}
    return [_job(ls, stored.get(mid), now) for mid, ls in by_msg.items()]


def _job(leases: list[Lease], m: StoredMessage | None, now: float) -> Job:
    first = leases[0]
    if m is None:  # the row is gone: a job all the same, which fails to render (a bounce)
        meta = MessageMeta(first.sg_message_id, "", None, None)
        return Job(first.tenant, first.domain, first.message_id, leases, b"", b"", meta, now)
    body, pers = m.body, m.personalization
    return Job(first.tenant, first.domain, m.message_id, leases, body, pers, _meta(m), now)


def _meta(m: StoredMessage) -> MessageMeta:
    try:
        body = decode_body(m.body)
        pers = decode_personalization(m.personalization)
    except Exception:
        # A corrupt row: its events lack the categories and custom_args that are lost.
        return MessageMeta(m.sg_message_id, m.smtp_id, None, None)
    args = dict(body.custom_args or {})
    args.update(pers.custom_args or {})
    return MessageMeta(m.sg_message_id, m.smtp_id, body.categories, args or None)
