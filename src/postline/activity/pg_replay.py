"""Past events from the PostgreSQL activity store, for webhook replay (replay.py's
counterpart: same pages, same keyset cursor on (ts, offset), over pg_schema.SELECT_WINDOW).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from postline.activity import pg_schema
from postline.activity.pg_store import PgActivityStore
from postline.activity.replay import PAGE
from postline.model.events import EventRecord


class PgReplaySource:
    def __init__(self, store: PgActivityStore, page: int = PAGE) -> None:
        self.store = store
        self.page = page

    async def window(
        self,
        tenant: str,
        start: float,
        end: float,
        types: frozenset[str] | None,
        categories: frozenset[str] | None,
    ) -> AsyncIterator[list[EventRecord]]:
        clauses: list[str] = []
        extra: list[object] = []
        if types is not None:
            clauses.append(pg_schema.WINDOW_TYPES)
            extra.append(sorted(types))
        if categories is not None:
            clauses.append(pg_schema.WINDOW_CATEGORIES)
            extra.append(sorted(categories))
        sql = pg_schema.SELECT_WINDOW.format(filters=" ".join(clauses))
        low, high = round(start * 1_000_000), round(end * 1_000_000)
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


def _record(tenant: str, row: tuple[object, ...]) -> EventRecord:
    _offset, ts_us, event, email, msg_id, data = row
    ts = int(str(ts_us)) / 1_000_000
    return EventRecord(ts, tenant, str(event), str(email), str(msg_id), str(data).encode())
