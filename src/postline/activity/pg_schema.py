"""The activity store's SQL for PostgreSQL (cluster mode), beside schema.py's DuckDB SQL.

The table is migration 3 (backends/postgres/migrations.py): ``activity_events``, the
same columns as DuckDB's ``events``, range-partitioned by day on ``ts`` (pg_store.py
creates and drops the partitions), B-tree indexes on ``to_email`` and ``msg_id``.

The message relation answers the same columns with the same meaning as
schema.message_relation, so the query language's WHERE (query_sql.py) and the response
shapes (shapes.py) are shared: ``categories`` is ``text[]``, ``unique_args`` a ``jsonb``
object whose values are all strings (a JSON value that is not a string becomes its JSON
text, as DuckDB's ``MAP(VARCHAR, VARCHAR)`` does), ``events`` a ``text[]`` with both
spellings of each event name. Placeholders are ``?``; pg_store.PgActivityStore.query
numbers them (``$1``...), so the API builds parameter lists exactly as for DuckDB.
PostgreSQL 15 has no ``any_value``: ``max`` picks a column's value per message instead,
and the categories and custom args come from the message's first accept-time event (the
one DuckDB's ``any_value`` finds first in insertion order).
"""

from __future__ import annotations

from postline.activity.schema import (
    ACCEPTED,
    ACTIVITY_NAMES,
    DELIVERED_EVENTS,
    EVENT_KEYS,
    NOT_DELIVERED_EVENTS,
)

TABLE = "activity_events"
COLUMNS = (
    "offset",
    "ts",
    "tenant",
    "msg_id",
    "to_email",
    "event",
    "from_email",
    "subject",
    "template_id",
    "asm_group_id",
    "data",
)


def _quoted(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_RESERVED = _quoted(EVENT_KEYS)
_RENAMED = _quoted(list(ACTIVITY_NAMES))
_NAME_CASE = (
    "CASE e " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ACTIVITY_NAMES.items()) + " END"
)


def categories_of(j: str) -> str:
    """SQL: the categories (``text[]``, empty when none) of the jsonb event ``j``, whose
    ``category`` is a list or a single string."""
    return f"""(CASE jsonb_typeof({j}->'category')
        WHEN 'array' THEN ARRAY(SELECT jsonb_array_elements_text({j}->'category'))
        WHEN 'string' THEN ARRAY[{j}->>'category']
        ELSE '{{}}'::text[] END)"""


def unique_args_of(j: str) -> str:
    """SQL: the custom args of the jsonb event ``j`` (keys that are not SendGrid's own)
    as a jsonb object of strings."""
    return f"""(SELECT coalesce(jsonb_object_agg(key, CASE jsonb_typeof(value)
            WHEN 'string' THEN value #>> '{{}}' ELSE value::text END), '{{}}'::jsonb)
        FROM jsonb_each(CASE jsonb_typeof({j}) WHEN 'object' THEN {j} ELSE '{{}}'::jsonb END)
        WHERE key NOT IN ({_RESERVED}))"""


def message_relation(prefilter: str | None) -> str:
    """One row per (msg_id, to_email) of tenant ``?``; ``prefilter`` (``msg_id`` or
    ``to_email``) adds ``AND <column> = ?`` so that column's index serves the scan. The
    JSON of the accept-time event is parsed once per message, and only when the query
    names categories or unique_args (PostgreSQL computes what the outer query uses)."""
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


def search_sql(where: str, prefilter: str | None) -> str:
    """As schema.search_sql; parameters: tenant, [prefilter value], the where's, limit."""
    return f"""
    SELECT from_email, msg_id, subject, to_email, status, opens_count, clicks_count,
        last_event_time
    FROM ({message_relation(prefilter)}) AS m
    WHERE ({where})
    ORDER BY last_event_time DESC, msg_id, to_email
    LIMIT ?"""


# As schema.SELECT_MESSAGE: a message's events, categories and custom args per event.
SELECT_MESSAGE = f"""
SELECT to_email, event, ts, from_email, subject, template_id, asm_group_id,
    {categories_of("data::jsonb")},
    CASE WHEN {ACCEPTED} THEN {unique_args_of("data::jsonb")} END,
    data
FROM {TABLE} WHERE msg_id = ? AND tenant = ?
ORDER BY to_email, ts, "offset"
"""

# Replay (replay source in pg_replay.py): events in [start, end) after a (ts, offset)
# cursor; times are microseconds since the epoch.
_US = "(TIMESTAMP '1970-01-01' + ?::bigint * INTERVAL '1 microsecond')"  # exact
SELECT_WINDOW = f"""
SELECT "offset", (extract(epoch FROM ts) * 1000000)::bigint, event, to_email, msg_id, data
FROM {TABLE}
WHERE tenant = ? AND ts >= {_US} AND ts < {_US}
    AND (ts > {_US} OR (ts = {_US} AND "offset" > ?))
    {{filters}}
ORDER BY ts, "offset"
LIMIT ?
"""
WINDOW_TYPES = "AND event = ANY(?::text[])"
WINDOW_CATEGORIES = f"AND {categories_of('data::jsonb')} && ?::text[]"

# The offset row and the turn (pg_store.py).
LOCK_OFFSET = 'SELECT "offset" FROM pipeline_offsets WHERE consumer = $1 FOR UPDATE'
GET_OFFSET = 'SELECT "offset" FROM pipeline_offsets WHERE consumer = $1'
INIT_OFFSET = (
    'INSERT INTO pipeline_offsets (consumer, "offset") VALUES ($1, 0) ON CONFLICT DO NOTHING'
)
SET_OFFSET = 'UPDATE pipeline_offsets SET "offset" = $2 WHERE consumer = $1'
PARTITIONS = f"""
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = '{TABLE}'::regclass
"""
