"""The activity store's SQL for PostgreSQL (cluster mode), beside schema.py's DuckDB SQL.

Two tables. ``activity_events`` (migration 3): the same columns as DuckDB's ``events``,
range-partitioned by day on ``ts`` (pg_store.py creates and drops the partitions), a
B-tree index on ``msg_id``; it answers a message's events (SELECT_MESSAGE) and the
webhook replay (SELECT_WINDOW). ``activity_messages`` (migration 6): one row per (tenant,
msg_id, to_email), kept up to date by every ingest (pg_messages.py, UPSERT_MESSAGES), so
that a search reads one row per message instead of grouping the tenant's events; indexes
on (tenant, last_event_time DESC, msg_id, to_email) for the listing, (tenant, status, ...)
for status filters other than delivered, the primary key (tenant, to_email, msg_id) for
``to_email=`` and the upsert. Its rows are deleted by retention once their last event's
day is dropped.

The message relation answers the same columns with the same meaning as
schema.message_relation, so the query language's WHERE (query_sql.py) and the response
shapes (shapes.py) are shared: ``categories`` is ``text[]``, ``unique_args`` a ``jsonb``
object whose values are all strings (a JSON value that is not a string becomes its JSON
text, as DuckDB's ``MAP(VARCHAR, VARCHAR)`` does), ``events`` a ``text[]`` with both
spellings of each event name. Placeholders are ``?``; pg_store.PgActivityStore.query
numbers them (``$1``...), so the API builds parameter lists exactly as for DuckDB.
The categories and custom args come from the message's first accept-time event (the
one DuckDB's ``any_value`` finds first in insertion order).
"""

from __future__ import annotations

from postline.activity.schema import ACCEPTED, EVENT_KEYS

TABLE = "activity_events"
MESSAGES = "activity_messages"
STAGE = "activity_stage"  # a temporary table per session: one batch's messages
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


_MESSAGE = """a.msg_id, a.to_email, a.from_email, a.subject, a.status, a.last_event_time,
        a.template_id, a.asm_group_id, NULL::text AS outbound_ip, a.opens_count,
        a.clicks_count, a.events, a.categories, a.unique_args"""


def message_relation(prefilter: str | None) -> str:
    """One row per (msg_id, to_email) of tenant ``?``; ``prefilter`` (``msg_id`` or
    ``to_email``) keeps the messages whose column is ``?``: ``to_email`` through the
    primary key's prefix, ``msg_id`` through activity_events' msg_id index (the
    message's recipients) and then the primary key."""
    if prefilter == "msg_id":
        return f"""
    SELECT {_MESSAGE}
    FROM (SELECT ?::text AS tenant, ?::text AS msg_id) AS p
    JOIN {MESSAGES} AS a ON a.tenant = p.tenant AND a.msg_id = p.msg_id
        AND a.to_email = ANY(ARRAY(SELECT e.to_email FROM {TABLE} AS e
            WHERE e.msg_id = p.msg_id AND e.tenant = p.tenant))"""
    scan = "a.tenant = ?" + (f" AND a.{prefilter} = ?::text" if prefilter else "")
    return f"""
    SELECT {_MESSAGE}
    FROM {MESSAGES} AS a WHERE {scan}"""


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

# The messages of a batch (pg_messages.py): COPYed into the session's staging table, then
# merged with the stored rows by the rules pg_messages.py's docstring lists. Rows are taken
# in key order, so two transactions merging the same messages lock them in the same order.
# ``events`` gains the batch's names when one of them is new, so a name may repeat (a
# search only asks whether a name is there; removing repeats takes a subquery per row,
# 15% of the upsert when most rows are updates).
MESSAGE_COLUMNS = (
    "tenant",
    "msg_id",
    "to_email",
    "from_email",
    "subject",
    "template_id",
    "asm_group_id",
    "status",
    "last_event_time",
    "events",
    "opens_count",
    "clicks_count",
    "accept_offset",
    "categories",
    "unique_args",
)
# The staging table: activity_messages' columns, but unique_args as JSON text (the pools'
# jsonb codec is text, and COPY is binary). Made once per session, emptied at each commit.
CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE} (
    tenant text COLLATE "C", msg_id text COLLATE "C", to_email text COLLATE "C",
    from_email text COLLATE "C", subject text COLLATE "C", template_id text COLLATE "C",
    asm_group_id bigint, status text COLLATE "C", last_event_time timestamp, events text[],
    opens_count integer, clicks_count integer, accept_offset bigint, categories text[],
    unique_args text
) ON COMMIT DELETE ROWS"""
_FIRST = "excluded.accept_offset < coalesce(m.accept_offset, 9223372036854775807)"
UPSERT_MESSAGES = f"""
INSERT INTO {MESSAGES} AS m
SELECT tenant, msg_id, to_email, from_email, subject, template_id, asm_group_id, status,
    last_event_time, events, opens_count, clicks_count, accept_offset, categories,
    unique_args::jsonb
FROM {STAGE} ORDER BY tenant, to_email, msg_id
ON CONFLICT (tenant, to_email, msg_id) DO UPDATE SET
    from_email = greatest(m.from_email, excluded.from_email),
    subject = greatest(m.subject, excluded.subject),
    template_id = greatest(m.template_id, excluded.template_id),
    asm_group_id = greatest(m.asm_group_id, excluded.asm_group_id),
    status = CASE WHEN 'delivered' IN (m.status, excluded.status) THEN 'delivered'
        WHEN 'not_delivered' IN (m.status, excluded.status) THEN 'not_delivered'
        ELSE 'processing' END,
    last_event_time = greatest(m.last_event_time, excluded.last_event_time),
    events = CASE WHEN excluded.events <@ m.events THEN m.events
        ELSE m.events || excluded.events END,
    opens_count = m.opens_count + excluded.opens_count,
    clicks_count = m.clicks_count + excluded.clicks_count,
    accept_offset = CASE WHEN {_FIRST} THEN excluded.accept_offset ELSE m.accept_offset END,
    categories = CASE WHEN {_FIRST} THEN excluded.categories ELSE m.categories END,
    unique_args = CASE WHEN {_FIRST} THEN excluded.unique_args ELSE m.unique_args END
"""
# Retention (pg_store.prune): the tenants that have messages whose last event is before
# $1 (a loose scan of the primary key, then one probe of the listing index each), then
# each one's such messages, a chunk at a time.
MESSAGE_TENANTS = f"""
WITH RECURSIVE t(tenant) AS (
    (SELECT tenant FROM {MESSAGES} ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT tenant FROM {MESSAGES} WHERE tenant > t.tenant ORDER BY tenant LIMIT 1)
    FROM t WHERE t.tenant IS NOT NULL)
SELECT tenant FROM t WHERE tenant IS NOT NULL AND EXISTS (
    SELECT 1 FROM {MESSAGES} m WHERE m.tenant = t.tenant AND m.last_event_time < $1)
"""
DELETE_MESSAGES = f"""
DELETE FROM {MESSAGES} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {MESSAGES} WHERE tenant = $1 AND last_event_time < $2 LIMIT $3))
"""
