"""The layout of ``<data_dir>/activity.duckdb``, on one screen.

``events``: one row per event, as the event log had it: the log's plain columns, the
message attributes of ``meta`` (from, subject, template, unsubscribe group: accept-time
events only, parsed by DuckDB on those rows alone), and ``data``, the event's JSON object,
stored as it is. Nothing else of the JSON is extracted at ingest: categories and custom
args are derived at query time from one ``data`` per message (``message_relation``; with
the to_email / msg_id prefilter that is a handful of rows). Parsing every event's JSON
inside the insert cost more than the rest of the insert (160k events/s with it, 270k
without, 2 cores). ART indexes on ``to_email`` and ``msg_id`` serve the two lookups the
API is judged on.

``consumer``: one row, the offset of the last event stored, written in the same
transaction as the rows, so a restart resumes exactly after what is stored.

A message-level question aggregates per (msg_id, to_email): ``message_relation``.
"""

from __future__ import annotations

# SendGrid's keys of an event object that are not custom args (sendgrid-compat.md 2.2).
EVENT_KEYS = (
    "email",
    "timestamp",
    "event",
    "sg_event_id",
    "sg_message_id",
    "smtp-id",
    "category",
    "reason",
    "status",
    "response",
    "attempt",
    "type",
    "ip",
    "tls",
    "cert_err",
    "bounce_classification",
    "send_at",
    "pool",
    "useragent",
    "url",
    "url_offset",
    "sg_machine_open",
    "asm_group_id",
)

CREATE = (
    """CREATE TABLE IF NOT EXISTS events (
        "offset" BIGINT NOT NULL,
        ts TIMESTAMP NOT NULL,
        tenant VARCHAR NOT NULL,
        msg_id VARCHAR NOT NULL,
        to_email VARCHAR NOT NULL,
        event VARCHAR NOT NULL,
        from_email VARCHAR,
        subject VARCHAR,
        template_id VARCHAR,
        asm_group_id BIGINT,
        data VARCHAR NOT NULL USING COMPRESSION zstd
    )""",
    "CREATE INDEX IF NOT EXISTS events_to_email ON events (to_email)",
    "CREATE INDEX IF NOT EXISTS events_msg_id ON events (msg_id)",
    'CREATE TABLE IF NOT EXISTS consumer ("offset" BIGINT NOT NULL)',
    "INSERT INTO consumer SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM consumer)",
)

_RESERVED = ", ".join(f"'{k}'" for k in EVENT_KEYS)

# ``batch`` is the Arrow table of rows.py (offset, ts, tenant, msg_id, email, event, data,
# meta). Only ``meta`` is parsed, and only where an accept-time event has one (CASE
# evaluates its branch on the selected rows alone). The column list is explicit, so a
# store made by an earlier layout (which had more columns, NULL from now on) still loads.
_META_FIELDS = (
    '{"from_email": "VARCHAR", "subject": "VARCHAR", "template_id": "VARCHAR",'
    ' "asm_group_id": "JSON"}'
)
INSERT_BATCH = f"""
INSERT INTO events ("offset", ts, tenant, msg_id, to_email, event, from_email, subject,
    template_id, asm_group_id, data)
SELECT "offset", make_timestamp((ts * 1000000)::BIGINT), tenant, msg_id, lower(email), event,
    m.from_email, m.subject, m.template_id, TRY_CAST(m.asm_group_id->>'$' AS BIGINT), data
FROM (
    SELECT *, CASE WHEN meta <> '' THEN json_transform(meta, '{_META_FIELDS}') END AS m
    FROM batch)
"""


# An accept-time event (its JSON carries the message's categories and custom args).
ACCEPTED = "(event IN ('processed', 'dropped') OR from_email IS NOT NULL)"


def categories_of(data: str) -> str:
    """SQL: the categories (VARCHAR[], [] when none) of the event JSON ``data``, whose
    ``category`` is a list or a single string (sendgrid-compat.md 2.2)."""
    return category_list(f"json_extract({data}, '$.category')")


def category_list(category: str) -> str:
    """SQL: ``category`` (a JSON list, string or NULL) as VARCHAR[]."""
    return f"""(CASE json_type({category})
        WHEN 'ARRAY' THEN coalesce(TRY_CAST({category} AS VARCHAR[]), [])
        WHEN 'VARCHAR' THEN [{category}->>'$']
        ELSE [] END)"""


def unique_args_of(data: str) -> str:
    """SQL: the custom args of the event JSON ``data`` (its keys that are not SendGrid's
    own, as a MAP; values that are not strings become their JSON text)."""
    return f"""map_from_entries(list_filter(
        map_entries(TRY_CAST({data}::JSON AS MAP(VARCHAR, VARCHAR))),
        lambda e: e.key NOT IN ({_RESERVED})))"""


SET_OFFSET = 'UPDATE consumer SET "offset" = ?'
SELECT_OFFSET = 'SELECT "offset" FROM consumer'
DELETE_OLDER = "DELETE FROM events WHERE ts < make_timestamp(?::BIGINT)"
COUNT_ROWS = "SELECT count(*) FROM events"

# The activity API's event names (the OpenAPI's EventName) for the log's event types; a
# message's ``events`` list holds both spellings, so Contains(events, "bounce") and
# Contains(events, "bounced") both find a bounced message.
ACTIVITY_NAMES = {
    "bounce": "bounced",
    "open": "opened",
    "click": "clicked",
    "spamreport": "spam_report",
}
DELIVERED_EVENTS = ("delivered", "open", "click")
NOT_DELIVERED_EVENTS = ("bounce", "dropped")

_NAME_CASE = (
    "CASE event "
    + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ACTIVITY_NAMES.items())
    + " ELSE event END"
)


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def message_relation(prefilter: str | None) -> str:
    """A SELECT of one row per (msg_id, to_email) of tenant ``?`` (the first parameter),
    with the columns the query language names; ``prefilter`` (``msg_id`` or
    ``to_email``) adds ``AND <column> = ?`` to the event scan so its ART index serves it.
    """
    scan = "tenant = ?" + (f" AND {prefilter} = ?" if prefilter else "")
    # Categories and custom args come from the JSON of the message's accept-time event
    # (processed / dropped, or any with meta; parsed on those rows alone, CASE
    # selects them, and aggregated as the small extracted values: carrying the whole JSON
    # into the aggregate cost 4x more at 10M events). A query that names neither parses
    # no JSON (DuckDB drops the unused aggregates). A message whose accept-time event is
    # gone (retention removes the oldest first) shows neither, as before.
    return f"""
    SELECT * EXCLUDE (_categories, _args),
        {category_list("_categories")} AS categories,
        coalesce(_args, MAP {{}})::MAP(VARCHAR, VARCHAR) AS unique_args
    FROM (
    SELECT msg_id, to_email,
        coalesce(any_value(from_email), '') AS from_email,
        coalesce(any_value(subject), '') AS subject,
        CASE WHEN bool_or(event IN ({_quoted(DELIVERED_EVENTS)})) THEN 'delivered'
             WHEN bool_or(event IN ({_quoted(NOT_DELIVERED_EVENTS)})) THEN 'not_delivered'
             ELSE 'processing' END AS status,
        max(ts) AS last_event_time,
        any_value(template_id) AS template_id,
        any_value(asm_group_id) AS asm_group_id,
        list_distinct(flatten(list([event, {_NAME_CASE}]))) AS events,
        NULL::VARCHAR AS outbound_ip,
        (count(*) FILTER (event = 'open'))::INTEGER AS opens_count,
        (count(*) FILTER (event = 'click'))::INTEGER AS clicks_count,
        any_value(CASE WHEN {ACCEPTED} THEN json_extract(data, '$.category') END) AS _categories,
        any_value(CASE WHEN {ACCEPTED} THEN {unique_args_of("data")} END) AS _args
    FROM events WHERE {scan}
    GROUP BY msg_id, to_email) AS g"""


def search_sql(where: str, prefilter: str | None) -> str:
    """Messages of the relation matching ``where``, newest first; parameters: tenant,
    [prefilter value], the where's parameters, limit."""
    return f"""
    SELECT from_email, msg_id, subject, to_email, status, opens_count, clicks_count,
        last_event_time
    FROM ({message_relation(prefilter)}) AS m
    WHERE ({where})
    ORDER BY last_event_time DESC, msg_id, to_email
    LIMIT ?"""


# A message's events; categories and custom args as message_relation derives them (the
# custom args only from accept-time events).
SELECT_MESSAGE = f"""
SELECT to_email, event, ts, from_email, subject, template_id, asm_group_id,
    {categories_of("data")},
    CASE WHEN {ACCEPTED} THEN {unique_args_of("data")} END,
    data
FROM events WHERE msg_id = ? AND tenant = ?
ORDER BY to_email, ts, "offset"
"""

# Replay: a tenant's events in [start, end), in (ts, offset) order, after a cursor.
SELECT_WINDOW = """
SELECT "offset", epoch_us(ts), event, to_email, msg_id, data
FROM events
WHERE tenant = ? AND ts >= make_timestamp(?::BIGINT) AND ts < make_timestamp(?::BIGINT)
    AND (ts > make_timestamp(?::BIGINT) OR (ts = make_timestamp(?::BIGINT) AND "offset" > ?))
    {filters}
ORDER BY ts, "offset"
LIMIT ?
"""
# The replay's category filter, on the event's own JSON.
WINDOW_CATEGORIES = f"AND list_has_any({categories_of('data')}, ?)"
