"""Binding a node's listeners, and the error that names the setting to change.

Every listener (``http.listen``, ``http.metrics_listen``, ``smtp.listen``,
``smtp.tls_listen``) is a ``host:port`` setting; a port the node cannot bind (in use, no
permission) stops the start with :class:`ListenFailed`, whose message names the address,
the reason and the setting, so ``postline serve`` can print it as it is and exit.
"""

from __future__ import annotations

import errno
import logging

from postline.api.http import HttpServer
from postline.api.types import Handler

log = logging.getLogger("postline.node")


class ListenFailed(Exception):
    """A listener could not be bound; the message names the setting to change."""


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)


async def listen_http(
    server: HttpServer, listen: str, setting: str, default_port: int, app: Handler | None = None
) -> int:
    """Bind ``server`` on the ``listen`` address (``app``: a handler of its own); the port."""
    host, port = split_hostport(listen, default_port)
    try:
        bound = await server.start(host, port, app=app)
    except OSError as exc:
        raise listen_failed(host, port, setting, exc) from None
    listening(setting, host, bound)
    return bound


def listening(setting: str, host: str, port: int) -> None:
    log.info("listening", extra={"setting": setting, "listen": f"{host}:{port}"})


def listen_failed(host: str, port: int, setting: str, exc: OSError) -> ListenFailed:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use"
    return ListenFailed(
        f"cannot listen on {host}:{port} ({setting}): {reason.lower()}; "
        f"stop what uses it or change {setting}"
    )
