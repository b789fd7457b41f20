"""The Email Activity API, as SendGrid's OpenAPI describes it (tsg_email_activity_v3.json).

  GET /v3/messages?query=...&limit=...  → {"messages": [summary]}, newest first
  GET /v3/messages/{msg_id}             → the message with its events, or 404

``query`` is SendGrid's query language (activity/query.py; absent or empty: every
message); ``limit`` 1..1000, default 10. A bad query is a 400 whose message names the
problem and its character position. Both routes want the key's ``messages.read`` or
``email_activity.read`` scope (SendGrid's scope list has both names for this API) and see
only the key's tenant: another tenant's msg_id is a 404, as if it did not exist.

A message is one recipient of one sg_message_id (activity/schema.py). A personalization
sent to several recipients shares its sg_message_id; ``GET /v3/messages/{msg_id}`` then
shows the first recipient in address order (the list endpoint shows every one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

import msgspec

from postline.activity import schema, shapes
from postline.activity.query import QueryError
from postline.activity.query_sql import Compiled, compile_query
from postline.activity.store import QueryTimeout
from postline.api.app import App
from postline.api.errors import forbidden, http_error, unauthorized
from postline.api.types import Request, Response

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
QUERY_SECONDS = 10.0  # a search running longer is interrupted (ingest waits behind it)
SCOPES = ("messages.read", "email_activity.read")


def _tenant(req: Request) -> str:
    key = req.key
    if key is None:  # the router authenticates every /v3/ path first
        raise unauthorized()
    if not any(scope in key.scopes for scope in SCOPES):
        raise forbidden()
    return key.tenant


def _json(body: object) -> Response:
    return Response(200, msgspec.json.encode(body))


def parse_params(query: str) -> tuple[str, int]:
    """(query text, limit) of the URL's query string; a bad limit is a 400."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        try:
            limit = int(raw.strip(), 10)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise http_error(400, f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return params.get("query", ""), limit


class Store(Protocol):
    """What the API needs of a store: DuckDB's (store.py) or PostgreSQL's (pg_store.py)."""

    async def query(
        self, sql: str, params: Sequence[object], timeout: float | None = None
    ) -> list[Any]: ...


@dataclass(frozen=True)
class Dialect:
    """The SQL of one store: the query language compiled for it, the search around the
    compiled WHERE, and the one-message select."""

    compile: Callable[[str], Compiled]
    search_sql: Callable[[str, str | None], str]
    select_message: str


DUCKDB = Dialect(compile_query, schema.search_sql, schema.SELECT_MESSAGE)


class ActivityApi:
    def __init__(self, store: Store, dialect: Dialect = DUCKDB) -> None:
        self._store = store
        self._sql = dialect

    async def list_messages(self, req: Request) -> Response:
        tenant = _tenant(req)
        text, limit = parse_params(req.query)
        try:
            compiled = self._sql.compile(text)
        except QueryError as err:
            raise http_error(400, f"invalid query: {err}", "query") from None
        column, value = compiled.prefilter or (None, None)
        sql = self._sql.search_sql(compiled.where, column)
        params = [tenant, *([value] if column else []), *compiled.params, limit]
        rows = await self._run(sql, params)
        return _json({"messages": [shapes.summary(r) for r in rows]})

    async def get_message(self, req: Request, params: dict[str, str]) -> Response:
        tenant = _tenant(req)
        msg_id = params["msg_id"]
        rows = await self._run(self._sql.select_message, [msg_id, tenant])
        if not rows:
            raise http_error(404, "not found", "message_id")
        first = [r for r in rows if r[0] == rows[0][0]]
        return _json(shapes.message(msg_id, first))

    async def _run(self, sql: str, params: list[object]) -> list[tuple[object, ...]]:
        try:
            return await self._store.query(sql, params, QUERY_SECONDS)
        except QueryTimeout as exc:
            raise http_error(400, f"query too costly: {exc}; narrow it", "query") from None


def register(app: App, store: Store, dialect: Dialect = DUCKDB) -> None:
    api = ActivityApi(store, dialect)
    # The scope is checked in the handlers: either of two names (SCOPES) will do.
    app.add("GET", "/v3/messages", api.list_messages)
    app.add_pattern("GET", "/v3/messages/{msg_id}", api.get_message)
