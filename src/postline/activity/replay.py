"""Past events from the activity store, for webhook replay (events/pipeline.ReplaySource).

The log keeps events for ``events.retention`` (a day); the store keeps them for
``activity.retention`` (30 days), so a replay of last week reads here. Pages of
``PAGE`` events in (ts, offset) order, each page one query that resumes after the last
row of the previous one (a keyset cursor: no OFFSET rescans, no long-held result).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from postline.activity import schema
from postline.activity.store import ActivityStore
from postline.model.events import EventRecord

PAGE = 5000


class StoreReplaySource:
    def __init__(self, store: ActivityStore, page: int = PAGE) -> None:
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
        filters, extra = _filters(types, categories)
        sql = schema.SELECT_WINDOW.format(filters=filters)
        low, high = int(start * 1_000_000), int(end * 1_000_000)
        after_ts, after_offset = low, -1
        while True:
            params = [tenant, low, high, after_ts, after_ts, after_offset, *extra, self.page]
            rows = await self.store.query(sql, params)
            if not rows:
                return
            yield [_record(tenant, row) for row in rows]
            if len(rows) < self.page:
                return
            after_offset, after_ts = int(rows[-1][0]), int(rows[-1][1])


def _filters(
    types: frozenset[str] | None, categories: frozenset[str] | None
) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if types is not None:
        clauses.append("AND list_contains(?, event)")
        params.append(sorted(types))
    if categories is not None:
        clauses.append(schema.WINDOW_CATEGORIES)
        params.append(sorted(categories))
    return " ".join(clauses), params


def _record(tenant: str, row: tuple[object, ...]) -> EventRecord:
    _offset, ts_us, event, email, msg_id, data = row
    ts = int(str(ts_us)) / 1_000_000
    return EventRecord(ts, tenant, str(event), str(email), str(msg_id), str(data).encode())
