"""The rollup store in PostgreSQL, shared by every node of a cluster.

Cluster mode's counterpart of store.StatsStore (SQLite per node), with the same calls
(``offset``, ``add_events``, ``query``, ``ranked``, ``row_count``, ``close``,
``rows_written``), so stats/api.py and the consumer serve either. Tables (migration 3):
``stats_rollups (tenant, category, day, metric) → n``, ``stats_firsts (k) → day`` (the
unique opens / clicks already counted, :data:`FIRSTS_DAYS` days), and the consumer's
row in ``pipeline_offsets`` ("stats/<datacenter>": one per event log, whose offsets
are its own).

A batch is one transaction, taken in turn with the other nodes exactly as the activity
store's (activity/pg_store.py says why a row lock): lock the consumer's offset row
``FOR UPDATE``, fold only the events after it (the others were counted by another node
or by an earlier try: ``duplicates``), record the new firsts (``INSERT ... ON CONFLICT
DO NOTHING RETURNING k`` says which are new in one statement), add the counts
(``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``, one statement of arrays)
and move the offset. A crash before COMMIT leaves neither counts nor offset; a batch is
never counted twice. Events imported from a datacenter that stores its own events in this
same database are not counted here (cluster/origins.py), though the offset moves past them.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from postline.activity.pg_store import open_pool
from postline.backends.postgres.migrate import migrate_dsn
from postline.cluster.origins import Origins
from postline.events.consumer import Batch
from postline.stats.metrics import First, Rollup, fold
from postline.stats.store import FIRSTS_DAYS, Row

LOCK_OFFSET = 'SELECT "offset" FROM pipeline_offsets WHERE consumer = $1 FOR UPDATE'
GET_OFFSET = 'SELECT "offset" FROM pipeline_offsets WHERE consumer = $1'
INIT_OFFSET = (
    'INSERT INTO pipeline_offsets (consumer, "offset") VALUES ($1, 0) ON CONFLICT DO NOTHING'
)
SET_OFFSET = 'UPDATE pipeline_offsets SET "offset" = $2 WHERE consumer = $1'
FIRSTS = """
INSERT INTO stats_firsts (k, day) SELECT * FROM unnest($1::bigint[], $2::integer[])
ON CONFLICT (k) DO NOTHING RETURNING k
"""
UPSERT = """
INSERT INTO stats_rollups (tenant, category, day, metric, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::bigint[])
ON CONFLICT (tenant, category, day, metric) DO UPDATE SET n = stats_rollups.n + excluded.n
"""
QUERY = """
SELECT category, day, metric, n FROM stats_rollups
WHERE tenant = $1 AND category = ANY($2::text[]) AND day BETWEEN $3 AND $4
"""


class PgStatsStore:
    """The shared rollups; calls run on the caller's loop (the pool is made there)."""

    def __init__(self, pool: Any, log: str = "") -> None:
        self.pool = pool
        self.log = log  # the event log's name (the datacenter): offsets are per log
        self.rows_written = 0  # rollup upserts of this node since start
        self.duplicates = 0  # events skipped: counted before, by any node
        self._firsts_cutoff = -(2**62)
        self.origins = Origins(pool.fetch)  # events other datacenters count here themselves
        # Test hook: awaited with the connection before COMMIT (a crash there).
        self.before_commit: Callable[[Any], Awaitable[None]] | None = None

    @classmethod
    async def open(cls, dsn: str, log: str = "") -> PgStatsStore:
        await migrate_dsn(dsn)
        return cls(await open_pool(dsn), log)

    def _row(self, consumer: str) -> str:
        """The offset row of ``consumer`` reading this store's log: "stats/<log>"."""
        return f"{consumer}/{self.log}" if self.log else consumer

    async def offset(self, consumer: str) -> int | None:
        await self.pool.execute(INIT_OFFSET, self._row(consumer))
        return int(await self.pool.fetchval(GET_OFFSET, self._row(consumer)))

    async def add_events(self, consumer: str, events: Batch) -> Rollup:
        """Fold and add the events after the shared offset, in this node's turn."""
        offsets = [o for o, _ in events]
        consumer = self._row(consumer)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(INIT_OFFSET, consumer)
            stored = int(await conn.fetchval(LOCK_OFFSET, consumer))
            fresh = events[bisect.bisect_right(offsets, stored) :]
            await self.origins.refresh_for(fresh)
            elsewhere = self.origins.elsewhere
            rollup = fold(rec for _, rec in fresh if not elsewhere(rec))
            counts = 0
            if fresh:
                counts = await self._apply(conn, rollup)
                await conn.execute(SET_OFFSET, consumer, fresh[-1][0])
            if self.before_commit is not None:
                await self.before_commit(conn)
        self.duplicates += len(events) - len(fresh)
        self.rows_written += counts
        return rollup

    async def _apply(self, conn: Any, rollup: Rollup) -> int:
        firsts = rollup.firsts
        if firsts:
            cutoff = max(f.day for f in firsts) - FIRSTS_DAYS
            if cutoff > self._firsts_cutoff:
                await conn.execute("DELETE FROM stats_firsts WHERE day < $1", cutoff)
                self._firsts_cutoff = cutoff
            batch: dict[int, First] = {}
            for f in firsts:
                batch.setdefault(f.key, f)
            new = await conn.fetch(FIRSTS, list(batch), [f.day for f in batch.values()])
            for (k,) in new:
                rollup.add_first(batch[k])
        counts = rollup.counts()
        if counts:
            keys = list(counts)
            await conn.execute(
                UPSERT,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
                list(counts.values()),
            )
        return len(counts)

    async def query(
        self, tenant: str, categories: Sequence[str], days: tuple[int, int]
    ) -> list[Row]:
        """Every counter of the tenant's ``categories`` ("" = global) with day in ``days``."""
        rows = await self.pool.fetch(QUERY, tenant, list(categories), *days)
        return [(r[0], int(r[1]), r[2], int(r[3])) for r in rows]

    async def ranked(
        self, tenant: str, days: tuple[int, int], metric: str, page: tuple[int, int, bool]
    ) -> list[Row]:
        """As StatsStore.ranked: one page of categories by their sum of ``metric``, ties
        in byte order of the name (``COLLATE "C"``, as SQLite compares)."""
        limit, offset, desc = page
        order = "DESC" if desc else "ASC"
        sql = (
            "WITH sums AS (SELECT category, SUM(CASE WHEN metric = $1 THEN n ELSE 0 END) AS k"
            " FROM stats_rollups WHERE tenant = $2 AND category <> '' AND day BETWEEN $3 AND $4"
            f' GROUP BY category ORDER BY k {order}, category COLLATE "C" LIMIT $5 OFFSET $6)'
            " SELECT r.category, r.day, r.metric, r.n FROM stats_rollups r"
            " JOIN sums USING (category) WHERE r.tenant = $2 AND r.day BETWEEN $3 AND $4"
        )
        rows = await self.pool.fetch(sql, metric, tenant, *days, limit, offset)
        return [(r[0], int(r[1]), r[2], int(r[3])) for r in rows]

    async def row_count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM stats_rollups"))

    async def close(self) -> None:
        await self.pool.close()
