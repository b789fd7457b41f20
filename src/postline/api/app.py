"""The router: path → method → (handler, scope). Auth runs first on every ``/v3/*`` path.

Order of checks, as SendGrid answers them: 401 (no or bad key), 404 (no such path),
405 (wrong method), 403 (key lacks the route's scope), then the handler. The HTTP layer
calls :meth:`App.admit` when a request's headers are in, so a 401 comes before the body is
read (an unauthenticated 44 MB upload is never held); the rest waits for the body.

Paths are exact (one dict lookup: ``/v3/mail/send`` pays nothing for the rest) or
patterns with ``{name}`` segments (``/v3/suppression/bounces/{email}``), tried in the
order added only when the exact lookup misses; a segment's value is percent-decoded and
handed to the handler (:data:`ParamHandler`). A pattern never matches an empty segment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from postline.api.auth import KeyCache, authenticate
from postline.api.auth_failures import FailedAuth
from postline.api.errors import HttpError, forbidden, method_not_allowed, not_found
from postline.api.types import Handler, Refusal, Request, Response

# A handler of a pattern route: the request and the decoded ``{name}`` values.
ParamHandler = Callable[[Request, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    scope: str | None


@dataclass(frozen=True, slots=True)
class Pattern:
    """``/v3/x/{email}`` split on "/": literal segments, and None where a value goes."""

    segments: tuple[str | None, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, path: str) -> Pattern:
        segments: list[str | None] = []
        names: list[str] = []
        for seg in path.rstrip("/").split("/"):
            if seg.startswith("{") and seg.endswith("}"):
                segments.append(None)
                names.append(seg[1:-1])
            else:
                segments.append(seg)
        return cls(tuple(segments), tuple(names))

    def match(self, path: str) -> dict[str, str] | None:
        parts = path.split("/")
        if len(parts) != len(self.segments):
            return None
        values = []
        for want, got in zip(self.segments, parts, strict=True):
            if want is None:
                if not got:
                    return None
                values.append(unquote(got, errors="strict"))
            elif want != got:
                return None
        return dict(zip(self.names, values, strict=True))


PatternRoute = tuple[ParamHandler, str | None]  # handler, scope


class App:
    def __init__(self, keys: KeyCache, failures: FailedAuth) -> None:
        self._keys = keys
        self._failures = failures
        self._routes: dict[str, dict[str, Route]] = {}
        self._patterns: dict[Pattern, dict[str, PatternRoute]] = {}
        self._prefixes: list[tuple[str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler, scope: str | None = None) -> None:
        self._routes.setdefault(path, {})[method] = Route(handler, scope)

    def add_pattern(
        self, method: str, pattern: str, handler: ParamHandler, scope: str | None = None
    ) -> None:
        """A route with ``{name}`` segments, e.g. ``/v3/suppression/bounces/{email}``."""
        self._patterns.setdefault(Pattern.parse(pattern), {})[method] = (handler, scope)

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Every method on ``prefix`` and below (after auth; the handler checks scopes):
        the node forwards the event pipeline's API to its worker process this way."""
        self._prefixes.append((prefix.rstrip("/"), handler))

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
        path = req.path.rstrip("/") or "/"
        for prefix, handler in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return await handler(req)
        by_method = self._routes.get(path)
        if by_method is None:
            return await self._dispatch_pattern(req, path)
        route = by_method.get(req.method)
        if route is None:
            raise method_not_allowed()
        _check_scope(req, route.scope)
        return await route.handler(req)

    async def _dispatch_pattern(self, req: Request, path: str) -> Response:
        by_method, params = self._match(path)
        found = by_method.get(req.method)
        if found is None:
            raise method_not_allowed()
        handler, scope = found
        _check_scope(req, scope)
        return await handler(req, params)

    def _match(self, path: str) -> tuple[dict[str, PatternRoute], dict[str, str]]:
        """The routes of the first pattern that matches ``path``, and its values; or 404."""
        for pattern, by_method in self._patterns.items():
            try:
                params = pattern.match(path)
            except UnicodeDecodeError:  # a %-escape that is not UTF-8: no such resource
                params = None
            if params is not None:
                return by_method, params
        raise not_found()


def _check_scope(req: Request, scope: str | None) -> None:
    if scope is not None and (req.key is None or scope not in req.key.scopes):
        raise forbidden()


def get_only(routes: Mapping[str, Handler]) -> Handler:
    """A router without auth for a listener of its own (``http.metrics_listen``): GET on
    these paths, 404 for anything else."""

    async def app(req: Request) -> Response:
        handler = routes.get(req.path) if req.method == "GET" else None
        return await handler(req) if handler is not None else not_found().response()

    return app
