"""The router: path → method → (handler, scope). Auth runs first on every ``/v3/*`` path.

Order of checks, as SendGrid answers them: 401 (no or bad key), 404 (no such path),
405 (wrong method), 403 (key lacks the route's scope), then the handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from postline.api.auth import KeyCache, authenticate
from postline.api.errors import HttpError, forbidden, method_not_allowed, not_found
from postline.api.types import Handler, Request, Response


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    scope: str | None


class App:
    def __init__(self, keys: KeyCache) -> None:
        self._keys = keys
        self._routes: dict[str, dict[str, Route]] = {}

    def add(self, method: str, path: str, handler: Handler, scope: str | None = None) -> None:
        self._routes.setdefault(path, {})[method] = Route(handler, scope)

    async def __call__(self, req: Request) -> Response:
        try:
            return await self._dispatch(req)
        except HttpError as err:
            return err.response()

    async def _dispatch(self, req: Request) -> Response:
        if req.path.startswith("/v3/"):
            req.key = authenticate(req, self._keys)
        by_method = self._routes.get(req.path.rstrip("/") or "/")
        if by_method is None:
            raise not_found()
        route = by_method.get(req.method)
        if route is None:
            raise method_not_allowed()
        if route.scope is not None and (req.key is None or route.scope not in req.key.scopes):
            raise forbidden()
        return await route.handler(req)
