"""The layout of ``<data_dir>/activity.duckdb``, on one screen.

``events``: one row per event, as the event log had it, plus the fields the activity API
filters on, pulled out of the event's JSON by DuckDB itself at insert (``INSERT_BATCH``):
the consumer hands over an Arrow table of the log's raw columns and DuckDB's JSON reader
does the parsing in C++ (parsing in Python first cost 4.5 us an event, half the ingest
budget). ART indexes on ``to_email`` and ``msg_id`` serve the two lookups the API is
judged on (10M rows: p99 5.8 ms and 0.9 ms; 112 ms for to_email without its index).

``consumer``: one row, the offset of the last event stored, written in the same
transaction as the rows, so a restart resumes exactly after what is stored.

Message attributes (from, subject, template, unsubscribe group) arrive in the ``meta`` of
accept-time events only (processed, dropped); a message-level question therefore
aggregates per (msg_id, to_email): ``message_relation``.
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
        categories VARCHAR[],
        unique_args MAP(VARCHAR, VARCHAR),
        reason VARCHAR,
        status VARCHAR,
        sg_event_id VARCHAR,
        data VARCHAR NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_to_email ON events (to_email)",
    "CREATE INDEX IF NOT EXISTS events_msg_id ON events (msg_id)",
    'CREATE TABLE IF NOT EXISTS consumer ("offset" BIGINT NOT NULL)',
    "INSERT INTO consumer SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM consumer)",
)

_RESERVED = ", ".join(f"'{k}'" for k in EVENT_KEYS)

# ``batch`` is the Arrow table of rows.py (offset, ts, tenant, msg_id, email, event, data,
# meta). Each JSON document is parsed once (json_transform into a struct: measured 15-25%
# faster than one ``->>`` per field, each of which parses again); unique_args only on
# accept-time events (the custom args are the same on every event of a message, and a
# MAP per row is the costliest part of the insert).
_DATA_FIELDS = (
    '{"category": "JSON", "reason": "VARCHAR", "status": "VARCHAR", "sg_event_id": "VARCHAR"}'
)
_META_FIELDS = (
    '{"from_email": "VARCHAR", "subject": "VARCHAR", "template_id": "VARCHAR",'
    ' "asm_group_id": "JSON"}'
)
INSERT_BATCH = f"""
INSERT INTO events
SELECT "offset", make_timestamp((ts * 1000000)::BIGINT), tenant, msg_id, lower(email), event,
    m.from_email, m.subject, m.template_id, TRY_CAST(m.asm_group_id->>'$' AS BIGINT),
    CASE json_type(d.category)
        WHEN 'ARRAY' THEN TRY_CAST(d.category AS VARCHAR[])
        WHEN 'VARCHAR' THEN [d.category->>'$']
        ELSE [] END,
    CASE WHEN m IS NOT NULL THEN map_from_entries(list_filter(
        map_entries(TRY_CAST(data::JSON AS MAP(VARCHAR, VARCHAR))),
        lambda e: e.key NOT IN ({_RESERVED}))) END,
    d.reason, d.status, d.sg_event_id, data
FROM (
    SELECT *, json_transform(data, '{_DATA_FIELDS}') AS d,
        CASE WHEN meta <> '' THEN json_transform(meta, '{_META_FIELDS}') END AS m
    FROM batch)
"""

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
    return f"""
    SELECT msg_id, to_email,
        coalesce(any_value(from_email), '') AS from_email,
        coalesce(any_value(subject), '') AS subject,
        CASE WHEN bool_or(event IN ({_quoted(DELIVERED_EVENTS)})) THEN 'delivered'
             WHEN bool_or(event IN ({_quoted(NOT_DELIVERED_EVENTS)})) THEN 'not_delivered'
             ELSE 'processing' END AS status,
        max(ts) AS last_event_time,
        coalesce(any_value(categories) FILTER (len(categories) > 0), []) AS categories,
        coalesce(any_value(unique_args), MAP {{}})::MAP(VARCHAR, VARCHAR) AS unique_args,
        any_value(template_id) AS template_id,
        any_value(asm_group_id) AS asm_group_id,
        list_distinct(flatten(list([event, {_NAME_CASE}]))) AS events,
        NULL::VARCHAR AS outbound_ip,
        (count(*) FILTER (event = 'open'))::INTEGER AS opens_count,
        (count(*) FILTER (event = 'click'))::INTEGER AS clicks_count
    FROM events WHERE {scan}
    GROUP BY msg_id, to_email"""


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


SELECT_MESSAGE = """
SELECT to_email, event, ts, from_email, subject, template_id, asm_group_id, categories,
    unique_args, data
FROM events WHERE msg_id = ? AND tenant = ?
ORDER BY to_email, ts, "offset"
"""

# Replay: a tenant's events in [start, end), in (ts, offset) order, after a cursor.
SELECT_WINDOW = """
SELECT "offset", epoch_us(ts), event, to_email, msg_id, data, categories
FROM events
WHERE tenant = ? AND ts >= make_timestamp(?::BIGINT) AND ts < make_timestamp(?::BIGINT)
    AND (ts > make_timestamp(?::BIGINT) OR (ts = make_timestamp(?::BIGINT) AND "offset" > ?))
    {filters}
ORDER BY ts, "offset"
LIMIT ?
"""
