"""Past events from the PostgreSQL activity store, for webhook replay: replay.py's
StoreReplaySource (same pages, same keyset cursor on (ts, offset)) over
pg_schema.SELECT_WINDOW.
"""

from __future__ import annotations

from postline.activity import pg_schema
from postline.activity.pg_store import PgActivityStore
from postline.activity.replay import PAGE, StoreReplaySource, WindowSql

POSTGRES = WindowSql(
    pg_schema.SELECT_WINDOW,
    pg_schema.WINDOW_TYPES,
    pg_schema.WINDOW_CATEGORIES,
    lambda t: round(t * 1_000_000),
)


class PgReplaySource(StoreReplaySource):
    def __init__(self, store: PgActivityStore, page: int = PAGE) -> None:
        super().__init__(store, page, POSTGRES)
