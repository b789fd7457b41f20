"""``GET /metrics``: node counters in the Prometheus text format (aggregates only).

Open by default; ``http.metrics_key`` makes it need ``Authorization: Bearer <key>``, and
``http.metrics_listen`` moves it to a listener of its own (runtime wires that).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from postline.api.errors import unauthorized
from postline.api.prometheus import CONTENT_TYPE, Family, render
from postline.api.types import Handler, Request, Response


def metrics(source: Callable[[], Awaitable[Sequence[Family]]], key: str = "") -> Handler:
    expected = f"Bearer {key}".encode()

    async def handler(req: Request) -> Response:
        given = req.headers.get("authorization", "").encode("latin-1", "replace")
        if key and not hmac.compare_digest(given, expected):
            return unauthorized(
                "GET /metrics needs Authorization: Bearer <http.metrics_key>"
            ).response()
        return Response(200, render(await source()), content_type=CONTENT_TYPE)

    return handler
