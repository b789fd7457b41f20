"""Past events from the activity store, for webhook replay (events/pipeline.ReplaySource).

The log keeps events for ``events.retention`` (a day); the store keeps them for
``activity.retention`` (30 days), so a replay of last week reads here. Pages of
``PAGE`` events in (ts, offset) order, each page one query that resumes after the last
row of the previous one (a keyset cursor: no OFFSET rescans, no long-held result).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from postline.activity import schema
from postline.activity.api import Store
from postline.model.events import EventRecord

PAGE = 5000


@dataclass(frozen=True)
class WindowSql:
    """One store's replay query: ``select`` with ``{filters}`` for the clauses that
    narrow it to event types and categories (each one parameter), and how a time
    becomes the store's microseconds."""

    select: str
    types: str
    categories: str
    to_us: Callable[[float], int]


DUCKDB = WindowSql(
    schema.SELECT_WINDOW,
    "AND list_contains(?, event)",
    schema.WINDOW_CATEGORIES,
    lambda t: int(t * 1_000_000),
)


class StoreReplaySource:
    """DuckDB's store (the default ``sql``) or PostgreSQL's (pg_replay.py)."""

    def __init__(self, store: Store, page: int = PAGE, sql: WindowSql = DUCKDB) -> None:
        self.store = store
        self.page = page
        self.sql = sql

    async def window(
        self,
        tenant: str,
        start: float,
        end: float,
        types: frozenset[str] | None,
        categories: frozenset[str] | None,
    ) -> AsyncIterator[list[EventRecord]]:
        filters, extra = self._filters(types, categories)
        sql = self.sql.select.format(filters=filters)
        low, high = self.sql.to_us(start), self.sql.to_us(end)
        after_ts, after_offset = low, -1
        while True:
            params = [tenant, low, high, after_ts, after_ts, after_offset, *extra, self.page]
            rows = await self.store.query(sql, params)
            if not rows:
                return
            yield [_record(tenant, row) for row in rows]
            if len(rows) < self.page:
                return
            after_offset, after_ts = int(str(rows[-1][0])), int(str(rows[-1][1]))

    def _filters(
        self, types: frozenset[str] | None, categories: frozenset[str] | None
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if types is not None:
            clauses.append(self.sql.types)
            params.append(sorted(types))
        if categories is not None:
            clauses.append(self.sql.categories)
            params.append(sorted(categories))
        return " ".join(clauses), params


def _record(tenant: str, row: tuple[object, ...]) -> EventRecord:
    _offset, ts_us, event, email, msg_id, data = row
    ts = int(str(ts_us)) / 1_000_000
    return EventRecord(ts, tenant, str(event), str(email), str(msg_id), str(data).encode())
