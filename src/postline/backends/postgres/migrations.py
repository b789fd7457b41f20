"""The schema, as numbered migrations: append only, never edit one that has shipped.

Each runs inside the one transaction :func:`postline.backends.postgres.migrate.migrate`
opens, so a migration must be transactional DDL (no ``CREATE INDEX CONCURRENTLY``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# Every write to api_keys notifies this channel with the key_id; each node's key mirror
# re-reads that row (a trigger, so a revoke typed into psql propagates too).
KEYS_CHANNEL = "postline_api_keys"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "api_keys",
        f"""
CREATE TABLE api_keys (
  key_id  text PRIMARY KEY,
  hash    text NOT NULL UNIQUE,          -- sha256(key), hex; the key itself is never stored
  name    text NOT NULL,
  tenant  text NOT NULL,
  scopes  text[] NOT NULL,
  created timestamptz NOT NULL,
  revoked boolean NOT NULL DEFAULT false
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created);
CREATE FUNCTION api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{KEYS_CHANNEL}', COALESCE(NEW.key_id, OLD.key_id));
  RETURN NULL;
END $$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
""",
    ),
    Migration(
        2,
        "suppressions_and_asm_groups",
        """
CREATE TABLE suppressions (             -- backends/postgres/suppressions.py
  tenant  text NOT NULL,
  email   text NOT NULL,                -- email_key: lower-cased, A-label domain
  list    text NOT NULL,                -- bounces, blocks, spam_reports, unsubscribes, ...
  created double precision NOT NULL,    -- unix seconds, as the SQLite spool keeps them
  reason  text NOT NULL,
  status  text NOT NULL,
  PRIMARY KEY (tenant, email, list)     -- the accept-time lookup: by address, any list
);
CREATE INDEX suppressions_page ON suppressions (tenant, list, created DESC, email);
CREATE TABLE asm_groups (               -- unsubscribe groups (backends/postgres/asm.py)
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
  tenant      text NOT NULL,
  name        text NOT NULL,
  description text NOT NULL,
  is_default  boolean NOT NULL,
  UNIQUE (tenant, name)
);
CREATE TABLE asm_members (              -- addresses unsubscribed from a group
  tenant   text NOT NULL,
  email    text NOT NULL,
  group_id bigint NOT NULL,
  created  double precision NOT NULL,
  PRIMARY KEY (tenant, group_id, email)
);
""",
    ),
    Migration(
        3,
        "activity_and_stats",
        """
CREATE TABLE pipeline_offsets (         -- one row per shared consumer (activity, stats):
  consumer text PRIMARY KEY,            -- locked FOR UPDATE by the node whose turn it is
  "offset" bigint NOT NULL              -- to ingest, written with that node's batch
);
CREATE TABLE activity_events (          -- activity/pg_store.py; daily partitions by ts
  "offset"     bigint NOT NULL,
  ts           timestamp NOT NULL,       -- UTC
  tenant       text NOT NULL,
  msg_id       text COLLATE "C" NOT NULL,  -- "C": compared as DuckDB does
  to_email     text COLLATE "C" NOT NULL,  -- lower-cased
  event        text NOT NULL,
  from_email   text COLLATE "C",
  subject      text COLLATE "C",
  template_id  text COLLATE "C",
  asm_group_id bigint,
  data         text NOT NULL             -- the event's JSON object, as the log had it
) PARTITION BY RANGE (ts);
CREATE INDEX activity_events_to_email ON activity_events (to_email);
CREATE INDEX activity_events_msg_id ON activity_events (msg_id);
CREATE TABLE stats_rollups (            -- stats/pg_store.py
  tenant   text NOT NULL,
  category text NOT NULL,
  day      integer NOT NULL,
  metric   text NOT NULL,
  n        bigint NOT NULL,
  PRIMARY KEY (tenant, category, day, metric)
);
CREATE TABLE stats_firsts (             -- unique opens / clicks already counted
  k   bigint PRIMARY KEY,
  day integer NOT NULL
);
CREATE INDEX stats_firsts_day ON stats_firsts (day);
""",
    ),
    Migration(
        4,
        "webhooks",
        """
CREATE TABLE webhooks (                 -- webhooks/pg_store.py: every node's API sees them
  seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the legacy API's
  id                  text NOT NULL UNIQUE,                             -- "oldest" order
  tenant              text NOT NULL,
  url                 text NOT NULL,
  enabled             boolean NOT NULL,
  types               text NOT NULL,     -- comma list of the settings names
  friendly_name       text,
  oauth_client_id     text,
  oauth_client_secret text,
  oauth_token_url     text,
  signed              boolean NOT NULL,
  private_key         bytea,             -- PKCS#8 DER, made when signing is first enabled
  public_key          text NOT NULL,
  start_offset        bigint NOT NULL,   -- the log's head at creation
  created             double precision NOT NULL,
  updated             double precision NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant, seq);
CREATE TABLE webhook_ledger (           -- posted offset ranges, per webhook and event log
  seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  webhook_id   text NOT NULL,
  log          text NOT NULL,            -- the datacenter whose log the offsets are of
  first_offset bigint NOT NULL,
  last_offset  bigint NOT NULL,
  count        bigint NOT NULL,
  status       text NOT NULL,            -- delivered | dead
  source       text NOT NULL,            -- live | dead_letters
  at           double precision NOT NULL
);
CREATE INDEX webhook_ledger_hook ON webhook_ledger (webhook_id, log, seq);
CREATE TABLE webhook_dead_letters (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  webhook_id   text NOT NULL,
  tenant       text NOT NULL,
  first_offset bigint NOT NULL,
  last_offset  bigint NOT NULL,
  count        bigint NOT NULL,
  body         bytea NOT NULL,           -- exactly as posted
  reason       text NOT NULL,
  at           double precision NOT NULL
);
CREATE INDEX webhook_dead_letters_hook ON webhook_dead_letters (tenant, webhook_id, id);
CREATE TABLE webhook_replays (
  id         text PRIMARY KEY,
  node       text NOT NULL,              -- the node running it (marked interrupted when
  tenant     text NOT NULL,              -- that node starts again)
  webhook_id text NOT NULL,
  kind       text NOT NULL,
  request    text NOT NULL,
  status     text NOT NULL,
  events     bigint NOT NULL DEFAULT 0,
  batches    bigint NOT NULL DEFAULT 0,
  failed     bigint NOT NULL DEFAULT 0,
  error      text NOT NULL DEFAULT '',
  created    double precision NOT NULL,
  finished   double precision
);
CREATE INDEX webhook_replays_created ON webhook_replays (created);
""",
    ),
    Migration(
        5,
        "settings",
        """
-- Values every node must share and none may choose alone (cluster/shared_secret.py): the
-- first writer's value wins (INSERT ... ON CONFLICT DO NOTHING), everyone reads it back.
CREATE TABLE settings (
  name  text PRIMARY KEY,
  value text NOT NULL
);
""",
    ),
    Migration(
        6,
        "activity_messages",
        """
-- One row per message (tenant, msg_id, to_email), merged at every ingest in the same
-- transaction as its events and the offset (activity/pg_messages.py), so that a search
-- reads one row per message. Not partitioned: a message's events span days, and a
-- partitioned table's unique index must hold the partition key, so a later event could
-- not find its message's row; retention deletes the rows whose last event is in a day
-- it dropped (activity/pg_store.py).
CREATE TABLE activity_messages (
  tenant          text COLLATE "C" NOT NULL,
  msg_id          text COLLATE "C" NOT NULL,
  to_email        text COLLATE "C" NOT NULL,  -- lower-cased
  from_email      text COLLATE "C" NOT NULL,  -- the greatest of its events', '' if none
  subject         text COLLATE "C" NOT NULL,
  template_id     text COLLATE "C",
  asm_group_id    bigint,
  status          text COLLATE "C" NOT NULL,  -- processing | delivered | not_delivered
  last_event_time timestamp NOT NULL,         -- UTC: the order of a search, and retention
  events          text[] NOT NULL,            -- distinct names, both spellings
  opens_count     integer NOT NULL,
  clicks_count    integer NOT NULL,
  accept_offset   bigint,                     -- the first accept-time event's offset,
  categories      text[] NOT NULL,            -- whose categories
  unique_args     jsonb NOT NULL,             -- and custom args (strings) these are
  PRIMARY KEY (tenant, to_email, msg_id)      -- also the index of to_email= searches
) WITH (fillfactor = 80);  -- a row is updated with its later events: room on its page
CREATE INDEX activity_messages_recent
  ON activity_messages (tenant, last_event_time DESC, msg_id, to_email);
-- Status filters: the listing index finds delivered messages (most of them) at once; the
-- others have this one (partial: a delivered row costs it nothing).
CREATE INDEX activity_messages_status
  ON activity_messages (tenant, status, last_event_time DESC, msg_id, to_email)
  WHERE status <> 'delivered';
-- Searches by address read activity_messages now, and those by msg_id find the message's
-- recipients through activity_events_msg_id: nothing reads events by address.
DROP INDEX activity_events_to_email;
-- The messages of the events already stored, as the search grouped them until now (an
-- accept-time event whose JSON jsonb refuses gives no categories and custom args).
CREATE FUNCTION pg_temp.activity_jsonb(t text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  RETURN t::jsonb;
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$;
INSERT INTO activity_messages
SELECT tenant, msg_id, to_email, coalesce(from_email, ''), coalesce(subject, ''),
  template_id, asm_group_id, status, last_event_time,
  ARRAY(SELECT DISTINCT e FROM unnest(ev || ARRAY(
    SELECT CASE e WHEN 'bounce' THEN 'bounced' WHEN 'open' THEN 'opened'
      WHEN 'click' THEN 'clicked' WHEN 'spamreport' THEN 'spam_report' END
    FROM unnest(ev) AS e WHERE e IN ('bounce', 'open', 'click', 'spamreport'))) AS e
    ORDER BY e),
  opens_count, clicks_count, accept_offset,
  CASE jsonb_typeof(j->'category')
    WHEN 'array' THEN ARRAY(SELECT jsonb_array_elements_text(j->'category'))
    WHEN 'string' THEN ARRAY[j->>'category']
    ELSE '{}'::text[] END,
  (SELECT coalesce(jsonb_object_agg(key, CASE jsonb_typeof(value)
      WHEN 'string' THEN value #>> '{}' ELSE value::text END), '{}'::jsonb)
    FROM jsonb_each(CASE jsonb_typeof(j) WHEN 'object' THEN j ELSE '{}'::jsonb END)
    WHERE key NOT IN ('email', 'timestamp', 'event', 'sg_event_id', 'sg_message_id',
      'smtp-id', 'category', 'reason', 'status', 'response', 'attempt', 'type', 'ip',
      'tls', 'cert_err', 'bounce_classification', 'send_at', 'pool', 'useragent', 'url',
      'url_offset', 'sg_machine_open', 'asm_group_id'))
FROM (
  SELECT g.*, pg_temp.activity_jsonb(acc) AS j FROM (
    SELECT tenant, msg_id, to_email, max(from_email) AS from_email, max(subject) AS subject,
      max(template_id) AS template_id, max(asm_group_id) AS asm_group_id,
      CASE WHEN bool_or(event IN ('delivered', 'open', 'click')) THEN 'delivered'
        WHEN bool_or(event IN ('bounce', 'dropped')) THEN 'not_delivered'
        ELSE 'processing' END AS status,
      max(ts) AS last_event_time,
      array_agg(DISTINCT event) AS ev,
      (count(*) FILTER (WHERE event = 'open'))::integer AS opens_count,
      (count(*) FILTER (WHERE event = 'click'))::integer AS clicks_count,
      min("offset") FILTER (WHERE event IN ('processed', 'dropped') OR from_email IS NOT NULL)
        AS accept_offset,
      (array_agg(data ORDER BY "offset") FILTER (
        WHERE event IN ('processed', 'dropped') OR from_email IS NOT NULL))[1] AS acc
    FROM activity_events GROUP BY tenant, msg_id, to_email) AS g) AS h;
DROP FUNCTION pg_temp.activity_jsonb(text);
""",
    ),
)


def check_order(migrations: tuple[Migration, ...]) -> None:
    """Versions run 1, 2, 3...: a gap or a repeat is a merge mistake, caught at import."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..n in order, got {versions}")


check_order(MIGRATIONS)
