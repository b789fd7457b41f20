"""The SMTP relay's worker: a process of its own that speaks SMTP for the node.

Why a process: relayed mail costs the node ~130 µs of Python per message in the SMTP
protocol, header rewriting and X-SMTPAPI alone (py-spy over ``postline bench smtp``:
45% of the event loop's busy time). In the node's process that work held the GIL that
the spool's group-commit writer needs, and each session waits for its commit before the
next MAIL: the relay's rate was bound by commit latency (p50 5.8 ms, ~2 ms of it waiting
for the GIL). Here it runs on the other core; the node only decodes a finished
:class:`AcceptBatch` and commits it.

The node (smtp/supervisor.py) binds the listening sockets and starts this worker on the
first connection, passing the sockets and one end of a socketpair (the link,
smtp/link.py) as inherited descriptors and its config and the descriptors' roles as JSON
on stdin. Over the link the worker asks ``accept`` (a batch to store durably: the 250
follows its reply) and ``auth`` (an AUTH password → the key); the node asks ``stats``.
Bodies over 256 KiB are streamed into ``<data_dir>/incoming`` here and only their path
crosses the link. The worker prints ``ready`` once it serves, exits when the node does
(PR_SET_PDEATHSIG, a broken link), and on SIGTERM stops listening and answers 421.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

import msgspec

from postline import config as config_mod
from postline import log as log_setup
from postline.child import die_with_parent
from postline.keys import ApiKey
from postline.smtp.build import relay_server
from postline.smtp.link import Failure, Link, RemoteError
from postline.spool.interface import AcceptBatch, SpoolUnavailable, UnknownGroups

log = logging.getLogger("postline.smtp")


class Start(msgspec.Struct):
    """What the node hands its worker on stdin."""

    config: dict[str, Any]
    link_fd: int
    listeners: list[tuple[int, bool]]  # (listening socket's fd, implicit TLS)


_decode_key = msgspec.msgpack.Decoder(ApiKey | None).decode
_decode_str = msgspec.msgpack.Decoder(str).decode
_decode_ids = msgspec.msgpack.Decoder(list[int]).decode


class NodeSide:
    """The worker's view of the node: accept and key lookups over the link."""

    def __init__(self) -> None:
        self.link: Link | None = None

    async def accept(self, batch: AcceptBatch) -> None:
        assert self.link is not None
        try:
            await self.link.call("accept", batch)
        except RemoteError as exc:
            if exc.kind == "unavailable":
                raise SpoolUnavailable(_decode_str(exc.detail)) from None
            if exc.kind == "unknown_groups":
                raise UnknownGroups(_decode_ids(exc.detail)) from None
            raise RuntimeError(f"the node could not store the message ({exc.kind})") from None

    async def lookup(self, password: str) -> ApiKey | None:
        assert self.link is not None
        key: ApiKey | None = _decode_key(await self.link.call("auth", password))
        return key


async def run(start: Start, cfg: config_mod.Config) -> None:
    node = NodeSide()
    server = relay_server(cfg, node.accept, node.lookup)

    async def handle(name: str, body: msgspec.Raw) -> Any:
        if name == "stats":
            return server.statistics()
        raise Failure("unknown_method", name)

    sock = socket.socket(fileno=start.link_fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = node.link = Link(sock, reader, writer, handle)
    for fd, implicit in start.listeners:
        await server.serve_socket(socket.socket(fileno=fd), implicit_tls=implicit)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = loop.create_task(link.serve())
    print("ready", flush=True)
    try:
        await asyncio.wait(
            [serving, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if serving.done():
            log.warning("the node closed the relay link; the relay worker stops")
    finally:
        await server.stop()
        link.close()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def main() -> int:
    die_with_parent()
    try:
        start = msgspec.json.decode(sys.stdin.buffer.read(), type=Start)
        cfg = config_mod.from_dict(start.config, "<node>")
    except (config_mod.ConfigError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"postline relay worker: bad start from the node: {exc}", file=sys.stderr)
        return 2
    log_setup.setup(cfg.log.level)
    import uvloop

    uvloop.run(run(start, cfg))
    with contextlib.suppress(OSError):
        os.close(start.link_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
