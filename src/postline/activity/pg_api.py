"""The Email Activity API over the PostgreSQL store (cluster mode): api.py's routes,
parameters, scopes, errors and response shapes, with the SQL of pg_schema.py and the
WHERE of pg_query.py. Every node answers from the same shared table, so a message
accepted on one node is found through any other.
"""

from __future__ import annotations

import msgspec

from postline.activity import pg_schema, shapes
from postline.activity.api import QUERY_SECONDS, SCOPES, parse_params
from postline.activity.pg_query import compile_pg
from postline.activity.pg_store import PgActivityStore
from postline.activity.query import QueryError
from postline.activity.store import QueryTimeout
from postline.api.app import App
from postline.api.errors import forbidden, http_error, unauthorized
from postline.api.types import Request, Response


def _tenant(req: Request) -> str:
    key = req.key
    if key is None:  # the router authenticates every /v3/ path first
        raise unauthorized()
    if not any(scope in key.scopes for scope in SCOPES):
        raise forbidden()
    return key.tenant


class PgActivityApi:
    def __init__(self, store: PgActivityStore) -> None:
        self._store = store

    async def list_messages(self, req: Request) -> Response:
        tenant = _tenant(req)
        text, limit = parse_params(req.query)
        try:
            compiled = compile_pg(text)
        except QueryError as err:
            raise http_error(400, f"invalid query: {err}", "query") from None
        column, value = compiled.prefilter or (None, None)
        sql = pg_schema.search_sql(compiled.where, column)
        params = [tenant, *([value] if column else []), *compiled.params, limit]
        rows = await self._run(sql, params)
        return Response(200, msgspec.json.encode({"messages": [shapes.summary(r) for r in rows]}))

    async def get_message(self, req: Request, params: dict[str, str]) -> Response:
        tenant = _tenant(req)
        msg_id = params["msg_id"]
        rows = await self._run(pg_schema.SELECT_MESSAGE, [msg_id, tenant])
        if not rows:
            raise http_error(404, "not found", "message_id")
        first = [r for r in rows if r[0] == rows[0][0]]
        return Response(200, msgspec.json.encode(shapes.message(msg_id, first)))

    async def _run(self, sql: str, params: list[object]) -> list[tuple[object, ...]]:
        try:
            return await self._store.query(sql, params, QUERY_SECONDS)
        except QueryTimeout as exc:
            raise http_error(400, f"query too costly: {exc}; narrow it", "query") from None


def register(app: App, store: PgActivityStore) -> None:
    api = PgActivityApi(store)
    app.add("GET", "/v3/messages", api.list_messages)
    app.add_pattern("GET", "/v3/messages/{msg_id}", api.get_message)
