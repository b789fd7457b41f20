"""The Email Activity API over the PostgreSQL store (cluster mode): api.py's routes,
parameters, scopes, errors and response shapes, with the SQL of pg_schema.py and the
WHERE of query_sql.py. Every node answers from the same shared table, so a message
accepted on one node is found through any other.
"""

from __future__ import annotations

from postline.activity import api, pg_schema
from postline.activity.pg_store import PgActivityStore
from postline.activity.query_sql import compile_pg
from postline.api.app import App

POSTGRES = api.Dialect(compile_pg, pg_schema.search_sql, pg_schema.SELECT_MESSAGE)


def register(app: App, store: PgActivityStore) -> None:
    api.register(app, store, POSTGRES)
