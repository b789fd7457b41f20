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
)


def check_order(migrations: tuple[Migration, ...]) -> None:
    """Versions run 1, 2, 3...: a gap or a repeat is a merge mistake, caught at import."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..n in order, got {versions}")


check_order(MIGRATIONS)
