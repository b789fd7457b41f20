"""The router: path → method → (handler, scope). Auth runs first on every ``/v3/*`` path.

Order of checks, as SendGrid answers them: 401 (no or bad key), 404 (no such path),
405 (wrong method), 403 (key lacks the route's scope), then the handler. The HTTP layer
calls :meth:`App.admit` when a request's headers are in, so a 401 comes before the body is
read (an unauthenticated 44 MB upload is never held); the rest waits for the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from postline.api.auth import KeyCache, authenticate
from postline.api.auth_failures import FailedAuth
from postline.api.errors import HttpError, forbidden, method_not_allowed, not_found
from postline.api.types import Handler, Refusal, Request, Response


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    scope: str | None


class App:
    def __init__(self, keys: KeyCache, failures: FailedAuth) -> None:
        self._keys = keys
        self._failures = failures
        self._routes: dict[str, dict[str, Route]] = {}

    def add(self, method: str, path: str, handler: Handler, scope: str | None = None) -> None:
        self._routes.setdefault(path, {})[method] = Route(handler, scope)

    async def __call__(self, req: Request) -> Response:
        try:
            return await self._dispatch(req)
        except HttpError as err:
            return err.response()

    def admit(self, req: Request) -> Refusal | None:
        """Authenticate a ``/v3/*`` request from its headers; a 401 to give at once, or None."""
        if req.key is not None or not req.path.startswith("/v3/"):
            return None
        try:
            req.key = authenticate(req, self._keys)
        except HttpError as err:
            delay = self._failures.failed(req.remote, err.errors[0].message)
            return Refusal(err.response(), delay)
        return None

    def statistics(self) -> dict[str, float]:
        return {"auth_failures": self._failures.failures, "auth_delayed": self._failures.delayed}

    async def _dispatch(self, req: Request) -> Response:
        refusal = self.admit(req)  # done already when the HTTP layer called it
        if refusal is not None:
            return refusal.response
        by_method = self._routes.get(req.path.rstrip("/") or "/")
        if by_method is None:
            raise not_found()
        route = by_method.get(req.method)
        if route is None:
            raise method_not_allowed()
        if route.scope is not None and (req.key is None or route.scope not in req.key.scopes):
            raise forbidden()
        return await route.handler(req)


def get_only(routes: Mapping[str, Handler]) -> Handler:
    """A router without auth for a listener of its own (``http.metrics_listen``): GET on
    these paths, 404 for anything else."""

    async def app(req: Request) -> Response:
        handler = routes.get(req.path) if req.method == "GET" else None
        return await handler(req) if handler is not None else not_found().response()

    return app
