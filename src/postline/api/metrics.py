"""``GET /metrics``: node counters in the Prometheus text format (aggregates only).

Open by default; ``http.metrics_key`` makes it need ``Authorization: Bearer <key>``, and
``http.metrics_listen`` moves it to a listener of its own (runtime wires that).
"""

from __future__ import annotations

import hmac
import resource
from collections.abc import Callable, Mapping

from postline.api.errors import unauthorized
from postline.api.types import Handler, Request, Response


def metrics(source: Callable[[], Mapping[str, float]], key: str = "") -> Handler:
    expected = f"Bearer {key}".encode()

    async def handler(req: Request) -> Response:
        given = req.headers.get("authorization", "").encode("latin-1", "replace")
        if key and not hmac.compare_digest(given, expected):
            return unauthorized(
                "GET /metrics needs Authorization: Bearer <http.metrics_key>"
            ).response()
        values = dict(source())
        values["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        lines = [f"postline_{name} {value:g}" for name, value in sorted(values.items())]
        return Response(200, ("\n".join(lines) + "\n").encode(), content_type="text/plain")

    return handler
