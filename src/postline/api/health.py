"""``GET /healthz``: 200 while the node accepts mail, 503 when it cannot (disk, shutdown)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from postline.api.types import Handler, Request, Response


def healthz(accepting: Callable[[], str | None]) -> Handler:
    async def handler(req: Request) -> Response:
        problem = accepting()
        if problem is None:
            return Response(200, msgspec.json.encode({"status": "ok"}))
        body = msgspec.json.encode({"status": "unavailable", "reason": problem})
        return Response(503, body, [("Retry-After", "10")])

    return handler
