"""A small HTTP/1.1 server on asyncio + httptools (the parser uvicorn uses).

Why not an ASGI server: the accept path's target (3,000 single-recipient requests/s with
fsync, on 2 cores shared with the load generator) leaves about 150 µs of CPU per request;
this protocol adds a few tens of µs, an ASGI stack several times that (measured for
issue 10: the limits below cost ~1.5 µs per request, 8 -> 9.5 µs of protocol CPU).
Keep-alive and pipelined requests are served in order. One connection's protocol, with
its defences against hostile clients, is in :mod:`postline.api.http_conn`.
"""

from __future__ import annotations

import asyncio
import logging
import os

from postline.api import http_wire as wire
from postline.api.http_conn import HttpProtocol
from postline.api.limits import ConnectionGuard, fit_fd_limit
from postline.api.types import Admit, Handler, Request, Response
from postline.config import HttpConfig

log = logging.getLogger("postline.http")


class HttpServer:
    """Owns the listening sockets and the open connections.

    ``app`` answers requests; ``admit`` judges each one when its headers are in (auth).
    The fd limit is raised for ``max_connections`` when the server is made.
    """

    def __init__(self, app: Handler, cfg: HttpConfig, *, admit: Admit | None = None) -> None:
        self.app = app
        self.admit = admit
        self.cfg = cfg
        self.guard = ConnectionGuard(fit_fd_limit(cfg.max_connections), cfg.max_connections_per_ip)
        self.connections: set[HttpProtocol] = set()
        self.closing = False
        self.refused_requests = 0
        self.timeouts = 0
        self._servers: list[asyncio.Server] = []

    async def dispatch(self, app: Handler, req: Request) -> Response:
        try:
            return await app(req)
        except Exception:
            log.exception("unhandled error on %s %s", req.method, req.path)
            return wire.server_error()

    async def start(
        self, host: str, port: int, *, app: Handler | None = None, admit: Admit | None = None
    ) -> int:
        """Listen on ``host:port`` and return the bound port. Called again with an ``app`` of
        its own, it opens another listener (``/metrics`` apart); the caps are shared."""
        loop = asyncio.get_running_loop()
        serve, judge = (self.app, self.admit) if app is None else (app, admit)
        server = await loop.create_server(
            lambda: HttpProtocol(self, serve, judge), host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket (mode 0600): the event pipeline worker's API, reached
        only through the node that started it."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            lambda: HttpProtocol(self, self.app, self.admit), path, backlog=1024
        )
        os.chmod(path, 0o600)
        self._servers.append(server)

    def statistics(self) -> dict[str, float]:
        return {
            "http_connections": self.guard.open,
            "http_connections_refused": self.guard.refused,
            "http_requests_refused": self.refused_requests,
            "http_timeouts": self.timeouts,
        }

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace``), close the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        deadline = asyncio.get_running_loop().time() + grace
        while any(not c.idle for c in self.connections):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
