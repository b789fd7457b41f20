"""What the PostgreSQL activity store's message rows are checked against: the search
relation as it was before migration 6 (one row per message by GROUP BY over the tenant's
events, pg_schema.message_relation until then), and random event logs to feed both.

Not a test module: test_pg_activity_messages.py imports it.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from postline.activity.pg_schema import TABLE, categories_of, unique_args_of
from postline.activity.schema import (
    ACCEPTED,
    ACTIVITY_NAMES,
    DELIVERED_EVENTS,
    NOT_DELIVERED_EVENTS,
)
from postline.events.consumer import Batch
from postline.model.events import EventRecord

DAY = 86400
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
COLUMNS = (
    "msg_id, to_email, from_email, subject, status, last_event_time, template_id,"
    " asm_group_id, outbound_ip, opens_count, clicks_count, events, categories, unique_args"
)


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_RENAMED = _quoted(list(ACTIVITY_NAMES))
_NAME_CASE = (
    "CASE e " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ACTIVITY_NAMES.items()) + " END"
)


def events_relation(prefilter: str | None) -> str:
    """pg_schema.message_relation before migration 6, as it was."""
    scan = "tenant = ?" + (f" AND {prefilter} = ?::text" if prefilter else "")
    return f"""
    SELECT msg_id, to_email, from_email, subject, status, last_event_time, template_id,
        asm_group_id, outbound_ip, opens_count, clicks_count,
        _ev || ARRAY(SELECT {_NAME_CASE} FROM unnest(_ev) AS e WHERE e IN ({_RENAMED}))
            AS events,
        {categories_of("_acc::jsonb")} AS categories,
        {unique_args_of("_acc::jsonb")} AS unique_args
    FROM (
    SELECT msg_id, to_email,
        coalesce(max(from_email), '') AS from_email,
        coalesce(max(subject), '') AS subject,
        CASE WHEN bool_or(event IN ({_quoted(DELIVERED_EVENTS)})) THEN 'delivered'
             WHEN bool_or(event IN ({_quoted(NOT_DELIVERED_EVENTS)})) THEN 'not_delivered'
             ELSE 'processing' END AS status,
        max(ts) AS last_event_time,
        max(template_id) AS template_id,
        max(asm_group_id) AS asm_group_id,
        array_agg(DISTINCT event) AS _ev,
        NULL::text AS outbound_ip,
        (count(*) FILTER (WHERE event = 'open'))::integer AS opens_count,
        (count(*) FILTER (WHERE event = 'click'))::integer AS clicks_count,
        (array_agg(data ORDER BY "offset") FILTER (WHERE {ACCEPTED}))[1] AS _acc
    FROM {TABLE} WHERE {scan}
    GROUP BY msg_id, to_email) AS g"""


def events_search_sql(where: str, prefilter: str | None) -> str:
    """pg_schema.search_sql before migration 6."""
    return f"""
    SELECT from_email, msg_id, subject, to_email, status, opens_count, clicks_count,
        last_event_time
    FROM ({events_relation(prefilter)}) AS m
    WHERE ({where})
    ORDER BY last_event_time DESC, msg_id, to_email
    LIMIT ?"""


def normalized(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows of COLUMNS comparable across the two relations: ``events`` is a set (the order
    and repeats of its names mean nothing to a search), the rest as they are."""
    out = []
    for r in rows:
        r = tuple(r)
        out.append((*r[:11], sorted(set(r[11])), r[12], r[13]))
    return sorted(out, key=lambda r: (r[0], r[1]))


# -- random logs -------------------------------------------------------------------------------

KINDS = ["processed", "dropped", "delivered", "deferred", "bounce", "open", "click",
         "spamreport", "unsubscribe", "group_unsubscribe", "made_up", "bounced"]  # fmt: skip
RECIPIENTS = ["ann@x.test", "Ann@X.test", "bob@x.test", "cy@y.test", "d_1@y.test"]
CATEGORIES: list[Any] = [["c1"], ["c1", "c2"], "solo", [], None, 5,
                         [1, None, "c3", {"b": 1, "a": [True]}], ["é\n\"q\\"]]  # fmt: skip
# JSON texts of custom args that are not strings, written as a sender's JSON may be.
ODD_VALUES = [b"1.50", b"-0", b"1e2", b"2.5E-3", b"12345678901234567890123", b"true",
              b"null", b'{"zz": 1, "a": [1, "\\u00e9", {}], "a": 2}', b'"\\u00e9\\t\\u0001"',
              b"[]"]  # fmt: skip
_enc = msgspec.json.encode


def _meta(rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        return b"{not json"
    meta: dict[str, Any] = {}
    for key, values in (
        ("from_email", ["a@x.com", "", "z@x.com", None]),
        ("subject", ["Hi", "", "Zed", None]),
        ("template_id", ["d-1", "d-2", None, 5]),
        ("asm_group_id", [7, 8, "9", True, None, 2**70]),
    ):
        value = rng.choice(values)
        if value is not None or rng.random() < 0.2:
            meta[key] = value
    return _enc(meta)


def _data(rng: random.Random, kind: str, email: str, msg: str, ts: float, n: int) -> bytes:
    obj: dict[str, Any] = {}
    for key in rng.sample(["n", "plan", "odd", "status", "Ünï"], rng.randrange(4)):
        obj[key] = "__ODD__" if key == "odd" else rng.choice(["0", "1", "gold", "", "x'y"])
    obj.update(email=email, timestamp=int(ts), event=kind, sg_event_id=f"e{n}",
               sg_message_id=msg, **{"smtp-id": f"<{msg}@x>"})  # fmt: skip
    category = rng.choice(CATEGORIES)
    if category is not None:
        obj["category"] = category
    return _enc(obj).replace(b'"__ODD__"', rng.choice(ODD_VALUES))


def random_log(rng: random.Random, messages: int) -> Batch:
    """Events of ``messages`` random messages (two tenants, shared msg_ids and addresses
    differing in case, over four days), interleaved in a log with offsets from 1."""
    events: list[tuple[float, EventRecord]] = []
    n = 0
    for _ in range(messages):
        tenant = rng.choice(["t", "t", "u"])
        msg = f"m{rng.randrange(messages // 2 + 1)}"
        email = rng.choice(RECIPIENTS)
        base = T0 - rng.randrange(4) * DAY + rng.random() * 100
        kinds = [rng.choice(KINDS) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.7:
            kinds.insert(0, "processed")
        for kind in kinds:
            n += 1
            ts = base + rng.choice([0.0, 0.0, rng.random() * 50, DAY * rng.random()])
            meta = b""
            if kind in ("processed", "dropped") or rng.random() < 0.1:
                meta = _meta(rng) if rng.random() < 0.9 else b""
            rec = EventRecord(ts, tenant, kind, email, msg, _data(rng, kind, email, msg, ts, n),
                              meta)  # fmt: skip
            events.append((ts + rng.uniform(-30, 30), rec))
    events.sort(key=lambda e: e[0])
    return [(offset, rec) for offset, (_, rec) in enumerate(events, 1)]


def queries(log: Batch) -> list[str]:
    """Searches over ``log``: broad ones and lookups of its own messages."""
    rec = log[len(log) // 2][1]
    day = "2027-01-14"
    return [
        "",
        'status="delivered"',
        'status="processed"',
        'status IN ("not_delivered", "processing")',
        'status != "delivered"',
        f'to_email="{rec.email}"',
        f'msg_id="{rec.sg_message_id}"',
        f'msg_id="{rec.sg_message_id}" AND status="delivered"',
        'Contains(categories, "c1") OR Contains(categories, "solo")',
        'Contains(categories, "1") OR Contains(categories, "{\\"a\\": [true], \\"b\\": 1}")',
        "unique_args['n'] = \"1\" OR unique_args['odd'] = \"1.50\""
        " OR unique_args['odd'] LIKE \"%é%\"",
        'Contains(unique_args, "plan") AND NOT Contains(unique_args, "status")',
        f'last_event_time BETWEEN TIMESTAMP "{day}T00:00:00Z" AND TIMESTAMP "{day}T23:59:59Z"',
        f'last_event_time < TIMESTAMP "{day}T08:00:30Z"',
        "opens_count > 0 OR clicks_count >= 2",
        'Contains(events, "bounced") OR Contains(events, "made_up")'
        ' OR Contains(events, "spam_report")',
        'from_email LIKE "%x.com" AND subject != "Hi"',
        'template_id = "d-2" OR asm_group_id IN (7, 9) OR asm_group_id IS NULL',
        'to_email LIKE "ann%" AND NOT Contains(events, "processed")',
    ]
