"""Leases → jobs: one job per message (and domain), with what every event of it carries.

A job is made for every lease, whatever its stored row holds: a row that is missing or
cannot be decoded still becomes a job, which fails to render and is bounced (issue 10: a
decode error here once stranded every lease of the batch for an hour).

The rows are decoded here once and the job carries them to rendering. A body is shared by
up to 1,000 personalizations (the spool hands the same bytes object to each message of a
batch that shares it): it is decoded once per batch, with one
:class:`~postline.model.size.SizeBound` whose key counts serve all of its messages.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict

from postline.model.mail import MailBody, decode_body, decode_personalization
from postline.model.relay import decode_relay, is_raw
from postline.model.size import SizeBound
from postline.schedule.ready import Job, MessageMeta
from postline.spool.interface import Lease, Spool, StoredMessage

# The shared bound of a body measures many personalizations: each keeps the per-
# personalization work limit (model/size.py WORK_BUDGET), as a bound made for it alone would.
_UNLIMITED = 1 << 62

Bodies = dict[bytes, tuple[MailBody, SizeBound]]

# Lease batches are small (a window's free slots), so a body also stays decoded across
# batches: the last RECENT bodies of at most RECENT_MAX_BYTES each (memory stays bounded).
RECENT = 64
RECENT_MAX_BYTES = 256 * 1024
_recent: OrderedDict[bytes, tuple[MailBody, SizeBound]] = OrderedDict()


async def load_jobs(spool: Spool, leases: list[Lease], now: float) -> list[Job]:
    """The jobs of ``leases`` (grouped by message); every lease is in exactly one."""
    if not leases:
        return []
    by_msg: dict[int, list[Lease]] = defaultdict(list)
    for lease in leases:
        by_msg[lease.message_id].append(lease)
    stored = {m.message_id: m for m in await spool.load(list(by_msg))}
    bodies: Bodies = {}
    return [_job(ls, stored.get(mid), now, bodies) for mid, ls in by_msg.items()]


def _job(leases: list[Lease], m: StoredMessage | None, now: float, bodies: Bodies) -> Job:
    first = leases[0]
    if m is None:  # the row is gone: a job all the same, which fails to render (a bounce)
        meta = MessageMeta(first.sg_message_id, "", None, None)
        return Job(first.tenant, first.domain, first.message_id, leases, b"", b"", meta, now)
    job = Job(first.tenant, first.domain, m.message_id, leases, m.body, m.personalization,
              MessageMeta(m.sg_message_id, m.smtp_id, None, None), now)  # fmt: skip
    if is_raw(m.body):
        return _relay_job(job, m)
    try:
        shared = bodies.get(m.body)
        if shared is None:
            shared = bodies[m.body] = _decoded_body(m.body)
        pers = decode_personalization(m.personalization)
    except Exception:
        # A corrupt row: its events lack the categories and custom_args that are lost, and
        # rendering decodes it again, fails and bounces it.
        return job
    body = shared[0]
    args = dict(body.custom_args or {})
    args.update(pers.custom_args or {})
    job.meta = MessageMeta(m.sg_message_id, m.smtp_id, body.categories, args or None)
    job.decoded = (body, pers, shared[1])
    return job


def _relay_job(job: Job, m: StoredMessage) -> Job:
    """A relayed message: its per-message part decoded; the body stays as received."""
    try:
        relay = decode_relay(m.personalization)
    except Exception:
        return job  # corrupt: rendering finds no relay part, fails and bounces it
    job.meta = MessageMeta(m.sg_message_id, m.smtp_id, relay.categories, relay.unique_args)
    job.relay = relay
    return job


def _decoded_body(blob: bytes) -> tuple[MailBody, SizeBound]:
    shared = _recent.get(blob)
    if shared is not None:
        _recent.move_to_end(blob)
        return shared
    body = decode_body(blob)
    shared = (body, SizeBound(body, request_budget=_UNLIMITED))
    if len(blob) <= RECENT_MAX_BYTES:
        _recent[blob] = shared
        if len(_recent) > RECENT:
            _recent.popitem(last=False)
    return shared
