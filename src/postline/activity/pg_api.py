"""The Email Activity API over the PostgreSQL store (cluster mode): api.py's routes,
parameters, scopes, errors and response shapes, with the SQL of pg_schema.py and the
WHERE of query_sql.py. Every node answers from the same shared table, so a message
accepted on one node is found through any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from postline.activity import api, pg_schema
from postline.activity.pg_store import PgActivityStore
from postline.activity.query_sql import compile_pg
from postline.api.app import App

POSTGRES = api.Dialect(compile_pg, pg_schema.search_sql, pg_schema.SELECT_MESSAGE)


class SearchPlans:
    """The store as the API sees it: a search is planned for its values each time (its
    best index depends on them: the partial status index, a tenant's size), a message's
    events keep their cached plan (planning them means planning every day partition)."""

    def __init__(self, store: PgActivityStore) -> None:
        self.store = store

    async def query(
        self, sql: str, params: Sequence[object], timeout: float | None = None
    ) -> list[Any]:
        custom = sql != pg_schema.SELECT_MESSAGE
        return await self.store.query(sql, params, timeout, custom_plan=custom)


def register(app: App, store: PgActivityStore) -> None:
    api.register(app, SearchPlans(store), POSTGRES)
