"""``GET /metrics``: node counters in the Prometheus text format (no auth, aggregates only)."""

from __future__ import annotations

import resource
from collections.abc import Callable, Mapping

from postline.api.types import Handler, Request, Response


def metrics(source: Callable[[], Mapping[str, float]]) -> Handler:
    async def handler(req: Request) -> Response:
        values = dict(source())
        values["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        lines = [f"postline_{name} {value:g}" for name, value in sorted(values.items())]
        return Response(200, ("\n".join(lines) + "\n").encode(), content_type="text/plain")

    return handler
