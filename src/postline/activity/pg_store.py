"""The activity store in PostgreSQL, shared by every node of a cluster.

Cluster mode's counterpart of store.ActivityStore (DuckDB, one per node): the same
calls (``offset``, ``query``, ``prune``, ``rows``, ``disk_bytes``, ``close``, the
counters the component's metrics read), so api.py's handlers and shapes.py serve either
(pg_api.py only swaps the SQL). ``ingest`` takes the log's events rather than an Arrow
table: COPY wants Python records, which are built straight from the events, and the
same pass folds them into one row per message (pg_messages.py) merged into
``activity_messages`` in the same transaction, which the searches read.

Layout (migration 3): ``activity_events`` range-partitioned by day on ``ts``, one
partition ``activity_events_pYYYYMMDD`` per UTC day, created ahead (today and the next
:data:`AHEAD` days, at open and at every retention pass) and on demand for an event of
another day; retention drops whole partitions (a day is dropped once all of it is older
than ``activity.retention``, so rows live up to a day longer than in DuckDB, and no
DELETE ever bloats the table). Partition DDL runs in short transactions of its own under
an advisory lock, never inside an ingest: creating or dropping a partition locks the
parent table exclusively, and two nodes creating the same partition must not race.

Retention of the message rows: a message stays searchable while the day of its last event
is kept. Each pass, after dropping the partitions of days before the cutoff day, deletes
the messages whose ``last_event_time`` is before that day (all their events were in the
dropped partitions: none is left to show), per tenant through the listing index, in
chunks of :data:`PRUNE_CHUNK`, each in a transaction that holds the offset row like an
ingest (so an ingest never waits on a deleting transaction, nor the other way round, and
no two of them can deadlock). A message some of whose events were dropped keeps the
values all of them gave it (status, counts, categories of its first accept-time event),
where the search over events showed what the remaining ones gave; a late event of a
message already deleted makes a new row from the events that arrive from then on.

Exactly once, with every node's worker reading the whole shared log: the offset is a
row of ``pipeline_offsets`` (one per consumer and event log: "activity/<datacenter>",
since the offsets of two datacenters' logs are not comparable) written in the same
transaction as the rows, and an ingest first locks that row ``FOR UPDATE``. The nodes
thus take turns: whoever holds the row COPYs what lies after the stored offset and
moves it; a node that waited behind it re-reads the offset under the lock and stores
only what is newer (nothing, when the other node stored the same events: counted in
``duplicates``). A crash or a lost connection before COMMIT rolls the rows and the
offset back together, and the server releases the row lock with the session. Why a row
lock and not an advisory lock: the row is written in the transaction anyway, so the lock
costs nothing more, cannot outlive its transaction, and the offset read under it is the
one the batch is checked against. ``idle_in_transaction_session_timeout`` ends a
transaction whose node hung holding the turn.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Self

import asyncpg  # type: ignore[import-untyped]

from postline.activity import pg_messages
from postline.activity import pg_schema as sql
from postline.activity.pg_messages import EPOCH, Fold, records
from postline.activity.query_sql import numbered
from postline.activity.store import QueryTimeout
from postline.backends.postgres.conn import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    DB_ERRORS,
    PostgresUnavailable,
    redact,
)
from postline.backends.postgres.migrate import migrate_dsn
from postline.cluster.origins import Origins
from postline.events.consumer import Batch

Row = tuple[Any, ...]
NAME = "activity"
DAY = 86400
US_PER_DAY = DAY * 1_000_000
AHEAD = 2  # days after today whose partitions exist before their first event
POOL_SIZE = 4  # ingest, retention, and API queries of this node
IDLE_IN_TRANSACTION_MS = 60_000
# "pl_parts" in ASCII: the advisory lock under which partitions are created and dropped.
PARTITION_LOCK = int.from_bytes(b"pl_parts", "big")
PRUNE_CHUNK = 20_000  # message rows a retention transaction deletes


def partition_name(day: int) -> str:
    """``activity_events_p20261127`` for UTC day ``day`` (days since the epoch)."""
    return f"{sql.TABLE}_p{date.fromordinal(EPOCH.toordinal() + day):%Y%m%d}"


def _day_of(name: str) -> int | None:
    try:
        stamp = datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d")
    except (IndexError, ValueError):
        return None
    return (stamp - EPOCH).days


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def open_pool(dsn: str, size: int = POOL_SIZE) -> Any:
    """A pool whose jsonb values come back as Python objects and whose transactions
    cannot idle forever while holding a turn."""
    try:
        return await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=size,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            init=_init_connection,
            server_settings={"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)},
        )
    except DB_ERRORS as exc:
        raise PostgresUnavailable(f"cannot connect to PostgreSQL at {redact(dsn)}: {exc}") from exc


def day_of(ts: float) -> int:
    """The UTC day (days since the epoch) of ``ts`` as stored (rounded to microseconds)."""
    return round(ts * 1_000_000) // US_PER_DAY


class PgActivityStore:
    def __init__(self, pool: Any, name: str = NAME, clock: Callable[[], float] = time.time):
        self.pool = pool
        self.name = name  # the offset row's key: "activity/<datacenter>" (one per log)
        self.clock = clock
        self.rows_stored = 0  # rows this node inserted since open
        self.batches = 0  # ingest transactions of this node that stored rows
        self.rows_pruned = 0  # rows in partitions this node dropped
        self.messages_pruned = 0  # message rows this node's retention deleted
        self.row_count = 0  # estimated at open, kept up to date with this node's work
        self.duplicates = 0  # events skipped: another node (or an earlier try) stored them
        self._days: set[int] = set()  # partitions known to exist
        self.origins = Origins(pool.fetch)  # events other datacenters store here themselves
        self._bytes = 0  # size of the partitions, read at open and at each retention pass
        # Test hook: awaited with the connection after the COPY and the offset update,
        # before COMMIT (tests end the session there: a crash between ingest and commit).
        self.before_commit: Callable[[Any], Awaitable[None]] | None = None

    @classmethod
    async def open(cls, dsn: str, name: str = NAME, clock: Callable[[], float] = time.time) -> Self:
        await migrate_dsn(dsn)  # safe from several nodes at once (migrate.py)
        pool = await open_pool(dsn)
        store = cls(pool, name, clock)
        try:
            await pool.execute(sql.INIT_OFFSET, name)
            await store.ensure_ahead()
            store.row_count = int(
                await pool.fetchval(
                    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i"
                    f" JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '{sql.TABLE}'"
                    "::regclass"
                )
            )
            await store.refresh_size()
        except BaseException:
            await pool.close()
            raise
        return store

    async def offset(self) -> int:
        """The offset of the last event stored by any node (0: none yet)."""
        value = await self.pool.fetchval(sql.GET_OFFSET, self.name)
        return int(value or 0)

    async def other_logs(self) -> list[str]:
        """The other event logs (datacenters) this table is fed from (each stores its
        own events here: cluster/origins.py)."""
        mine = self.name.split("/", 1)
        rows = await self.pool.fetch(
            "SELECT consumer FROM pipeline_offsets WHERE consumer LIKE $1 AND consumer <> $2",
            mine[0] + "/%",
            self.name,
        )
        return sorted(r[0].split("/", 1)[1] for r in rows)

    async def ingest(self, events: Batch) -> int:
        """Store the events after the shared offset, and move it, in one transaction
        taken in turn with the other nodes (module docstring); the rows stored."""
        if not events:
            return 0
        await self.ensure_days({day_of(rec.ts) for _, rec in events})
        offsets = [o for o, _ in events]
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                stored = int(await conn.fetchval(sql.LOCK_OFFSET, self.name) or 0)
                fresh = events[bisect.bisect_right(offsets, stored) :]
                if fresh:
                    # not the events their own datacenter stores here (cluster/origins.py)
                    rows = await self.origins.keep(fresh)
                    fold = Fold()  # filled while COPY reads the records
                    await conn.copy_records_to_table(
                        sql.TABLE, records=records(rows, fold), columns=list(sql.COLUMNS)
                    )
                    await pg_messages.upsert(conn, fold)
                    await conn.execute(sql.SET_OFFSET, self.name, fresh[-1][0])
                if self.before_commit is not None:
                    await self.before_commit(conn)
        except asyncpg.exceptions.CheckViolationError:
            self._days.clear()  # "no partition for row": one was dropped by another node
            raise
        self.duplicates += len(events) - len(fresh)
        if fresh:
            self.rows_stored += len(fresh)
            self.row_count += len(fresh)
            self.batches += 1
        return len(fresh)

    async def query(
        self,
        text: str,
        params: Sequence[object],
        timeout: float | None = None,
        *,
        custom_plan: bool = False,
    ) -> list[Row]:
        """Rows of ``text`` (``?`` placeholders); past ``timeout`` seconds PostgreSQL
        cancels it and :class:`QueryTimeout` is raised. ``custom_plan``: planned for these
        values each time, never with the statement's cached generic plan (which cannot
        use the partial status index, nor tell a large tenant from a small one); the
        setting goes with the connection's RESET ALL when the pool takes it back."""
        try:
            async with self.pool.acquire() as conn:
                if custom_plan:
                    await conn.execute("SET plan_cache_mode = force_custom_plan")
                rows = await conn.fetch(numbered(text), *params, timeout=timeout)
        except TimeoutError:
            raise QueryTimeout(timeout or 0.0) from None
        return [tuple(r) for r in rows]

    async def ensure_ahead(self) -> None:
        """Partitions for today and the next :data:`AHEAD` days."""
        today = int(self.clock() // DAY)
        await self.ensure_days(set(range(today, today + AHEAD + 1)))

    async def ensure_days(self, days: set[int]) -> None:
        missing = days - self._days
        if not missing:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            existing = {_day_of(r[0]) for r in await conn.fetch(sql.PARTITIONS)}
            for day in sorted(missing - existing):
                low, high = EPOCH + timedelta(days=day), EPOCH + timedelta(days=day + 1)
                await conn.execute(
                    f"CREATE TABLE {partition_name(day)} PARTITION OF {sql.TABLE}"
                    f" FOR VALUES FROM ('{low:%Y-%m-%d}') TO ('{high:%Y-%m-%d}')"
                )
        self._days |= days

    async def partitions(self) -> list[int]:
        """The days that have a partition, oldest first."""
        rows = await self.pool.fetch(sql.PARTITIONS)
        return sorted(d for d in (_day_of(r[0]) for r in rows) if d is not None)

    async def prune(self, before: float) -> int:
        """Drop the partitions of days wholly older than ``before`` (unix seconds); the
        rows they held. Also creates the partitions ahead (retention runs periodically)."""
        cutoff = int(before // DAY)  # a partition of day d ends at (d + 1) * DAY
        gone = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            for (name,) in await conn.fetch(sql.PARTITIONS):
                day = _day_of(name)
                if day is None or day >= cutoff:
                    continue
                gone += int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
                await conn.execute(f"DROP TABLE {name}")
                self._days.discard(day)
        self.rows_pruned += gone
        self.row_count = max(0, self.row_count - gone)
        self.messages_pruned += await self.prune_messages(EPOCH + timedelta(days=cutoff))
        await self.ensure_ahead()
        await self.refresh_size()
        return gone

    async def prune_messages(self, before: datetime) -> int:
        """Delete the message rows whose last event is before ``before`` (module
        docstring); how many."""
        gone = 0
        for (tenant,) in await self.pool.fetch(sql.MESSAGE_TENANTS, before):
            n = PRUNE_CHUNK
            while n == PRUNE_CHUNK:
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.fetchval(sql.LOCK_OFFSET, self.name)
                    status = await conn.execute(sql.DELETE_MESSAGES, tenant, before, PRUNE_CHUNK)
                n = int(status.split()[-1])
                gone += n
        return gone

    async def messages(self) -> int:
        """Message rows stored (a count)."""
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {sql.MESSAGES}"))

    async def rows(self) -> int:
        """Rows stored (a count over every partition)."""
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {sql.TABLE}"))

    async def refresh_size(self) -> None:
        self._bytes = int(
            await self.pool.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint"
                f" + pg_total_relation_size('{sql.MESSAGES}')"
                f" FROM pg_inherits WHERE inhparent = '{sql.TABLE}'::regclass"
            )
        )

    def disk_bytes(self) -> int:
        """Bytes of the partitions, the message rows and their indexes as last read (no
        I/O here)."""
        return self._bytes

    async def close(self) -> None:
        await self.pool.close()
