"""What one ingest writes to PostgreSQL besides the offset: the event rows (COPY into
``activity_events``) and, folded from the same events in the same pass, one row per
message (``activity_messages``, migration 6), so that a search reads one row per message
instead of grouping the tenant's events (pg_schema.message_relation).

A message is (tenant, msg_id, to_email). Its row holds what the search relation answers,
merged across batches and nodes by pg_schema.UPSERT_MESSAGES with the rules the old
GROUP BY over events applied (kept as the reference in the tests):

* ``from_email`` / ``subject`` / ``template_id`` / ``asm_group_id``: the greatest value
  of the message's events (only accept-time events carry them; ``''`` when none has);
* ``status``: delivered if any event is delivered / open / click, else not_delivered if
  any is bounce / dropped, else processing (a rank, so merging is the greater of two);
* ``last_event_time``: the latest ``ts``; ``opens_count`` / ``clicks_count``: sums;
* ``events``: the event names with the activity API's spellings added
  (schema.ACTIVITY_NAMES), a set merged by union (a name may repeat, pg_schema);
* ``categories`` / ``unique_args``: from the message's first accept-time event (lowest
  offset: processed, dropped, or any event with a ``from_email`` in its meta), parsed
  here once per message (pg_accept.py) into what the jsonb functions gave.

Events already stored (offsets at or below the shared one) never reach the fold
(pg_store.ingest), so counts cannot be counted twice.

Why the fold is in Python: COPYing the events into a staging table and inserting them
and their GROUP BY from there in SQL measured 48,000 events/s against 77,000 this way
(300,000 events of bench.pg_events; 26,000 against 40,000 with ``--lag 20000``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import msgspec

from postline.activity import pg_schema as sql
from postline.activity.pg_accept import accept_fields
from postline.activity.schema import (
    ACTIVITY_NAMES,
    DELIVERED_EVENTS,
    NOT_DELIVERED_EVENTS,
)
from postline.events.consumer import Batch

Record = tuple[int, datetime, str, str, str, str, Any, Any, Any, Any, str]
Key = tuple[str, str, str]  # tenant, msg_id, to_email
EPOCH = datetime(1970, 1, 1)
_NAMES = ("processed", "dropped", "delivered", "deferred", "bounce", "open", "click",
          "spamreport", "unsubscribe", "group_unsubscribe", "group_resubscribe")  # fmt: skip
_BITS = {name: 1 << i for i, name in enumerate(_NAMES)}
_ACCEPT = _BITS["processed"] | _BITS["dropped"]  # as schema.ACCEPTED (or a from_email)
_OPEN, _CLICK = _BITS["open"], _BITS["click"]
_DELIVERED = frozenset(DELIVERED_EVENTS)
_NOT_DELIVERED = frozenset(NOT_DELIVERED_EVENTS)
_meta = msgspec.json.Decoder(dict[str, Any]).decode
_NO_ACCEPT: tuple[list[str | None], str] = ([], "{}")  # no accept-time event in the batch


class Fold:
    """One batch's messages: ``index`` maps a message to its row in ``cols``, one list per
    column (from_email, subject, template_id, asm_group_id, latest ts, its event names as
    bits of _BITS, opens, clicks, first accept-time offset, that event's JSON, the set of
    its event names _BITS does not know or None). Not a list per message: every container
    made here is work for the cyclic GC (a list a message cost ~2 us an event in GC
    passes)."""

    __slots__ = ("cols", "index")

    def __init__(self) -> None:
        self.index: dict[Key, int] = {}
        self.cols: tuple[list[Any], ...] = tuple([] for _ in range(11))

    def __len__(self) -> int:
        return len(self.index)


def records(events: Batch, fold: Fold | None = None) -> Iterator[Record]:
    """COPY records of ``events`` (offset order): the columns of pg_schema.COLUMNS, the
    message attributes parsed from ``meta`` on the accept-time events that have one; with
    ``fold``, each event is also folded into its message's entry.

    A generator: asyncpg sends the COPY data as its buffer fills, so PostgreSQL loads
    the first rows while the later ones (and the fold) are still being built here."""
    index: dict[Key, int] = {}
    cols: tuple[list[Any], ...] = tuple([] for _ in range(11))
    if fold is not None:
        index, cols = fold.index, fold.cols
    froms, subjects, templates, groups, lasts, bits, opens, clicks, firsts, datas, others = cols
    for offset, rec in events:
        from_email = subject = template_id = group = None
        if rec.meta:
            try:
                meta = _meta(rec.meta)
            except msgspec.DecodeError:
                meta = {}
            from_email, subject = _text(meta.get("from_email")), _text(meta.get("subject"))
            template_id, group = _text(meta.get("template_id")), _int(meta.get("asm_group_id"))
        ts = EPOCH + timedelta(microseconds=round(rec.ts * 1_000_000))
        to_email = rec.email.lower()
        event = rec.event
        yield (
            offset,
            ts,
            rec.tenant,
            rec.sg_message_id,
            to_email,
            event,
            from_email,
            subject,
            template_id,
            group,
            rec.data.decode(),
        )
        if fold is None:
            continue
        key = (rec.tenant, rec.sg_message_id, to_email)
        bit = _BITS.get(event, 0)
        i = index.get(key)
        if i is None:
            i = index[key] = len(lasts)
            froms.append(from_email)
            subjects.append(subject)
            templates.append(template_id)
            groups.append(group)
            lasts.append(ts)
            bits.append(bit)
            opens.append(0)
            clicks.append(0)
            firsts.append(None)
            datas.append(None)
            others.append(None)
        else:
            bits[i] |= bit
            if ts > lasts[i]:
                lasts[i] = ts
            if rec.meta:
                attrs = (from_email, subject, template_id, group)
                for col, value in zip(cols[:4], attrs, strict=True):
                    if value is not None and (col[i] is None or value > col[i]):
                        col[i] = value
        if bit & _OPEN:
            opens[i] += 1
        elif bit & _CLICK:
            clicks[i] += 1
        elif not bit:
            if others[i] is None:
                others[i] = {event}
            else:
                others[i].add(event)
        if firsts[i] is None and (bit & _ACCEPT or from_email is not None):
            firsts[i], datas[i] = offset, rec.data


def message_rows(fold: Fold) -> Iterator[tuple[Any, ...]]:
    """COPY records of pg_schema.MESSAGE_COLUMNS, one per message of ``fold``."""
    by_bits: dict[int, tuple[str, list[str]]] = {}  # a handful of sets of events a batch
    froms, subjects, templates, groups, lasts, bits, opens, clicks, firsts, datas, others = (
        fold.cols
    )
    for (tenant, msg_id, to_email), i in fold.index.items():
        if others[i] is None:
            status_events = by_bits.get(bits[i])
            if status_events is None:
                status_events = by_bits[bits[i]] = status_and_events(_names(bits[i]))
        else:
            status_events = status_and_events(_names(bits[i]) | others[i])
        categories, args = _NO_ACCEPT if datas[i] is None else accept_fields(datas[i])
        yield (
            tenant,
            msg_id,
            to_email,
            froms[i] or "",
            subjects[i] or "",
            templates[i],
            groups[i],
            status_events[0],
            lasts[i],
            status_events[1],
            opens[i],
            clicks[i],
            firsts[i],
            categories,
            args,
        )


def _names(bits: int) -> frozenset[str]:
    return frozenset(name for name, bit in _BITS.items() if bits & bit)


def status_and_events(kinds: frozenset[str]) -> tuple[str, list[str]]:
    """The status of a message with events ``kinds``, and its ``events`` column."""
    if kinds & _DELIVERED:
        status = "delivered"
    elif kinds & _NOT_DELIVERED:
        status = "not_delivered"
    else:
        status = "processing"
    return status, sorted(kinds | {ACTIVITY_NAMES[k] for k in kinds if k in ACTIVITY_NAMES})


async def upsert(conn: Any, fold: Fold) -> None:
    """Merge the messages of ``fold`` into activity_messages, in the caller's transaction:
    COPY into a temporary staging table (made once per session, emptied at commit), then
    one INSERT ... ON CONFLICT DO UPDATE."""
    if not fold:
        return
    await conn.execute(sql.CREATE_STAGE)
    await conn.copy_records_to_table(
        sql.STAGE, records=message_rows(fold), columns=list(sql.MESSAGE_COLUMNS)
    )
    await conn.execute(sql.UPSERT_MESSAGES)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return _int(int(value))
    return None
