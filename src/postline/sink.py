"""``postline sink``: a local SMTP destination that prints what it receives.

For a first message seen delivered on a machine without internet, and for trying a
configuration before it meets the world's mail servers: route mail to it
(``[delivery] routes = { "*" = "127.0.0.1:2526" }``) and watch each message arrive.
It is the test suite's fake destination, so the recipient's local part steers its reply:
``450-bob@example.com`` is deferred, ``550-bob@example.com`` bounced, anything else accepted.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import signal
import sys
import time
from typing import TextIO

from postline.testing.fake_smtp import FakeSmtpServer, Received

_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def describe(msg: Received, show: str) -> str:
    """One line per message (``show="summary"``), or that line and the whole message."""
    head = _HEADERS.parsebytes(msg.data)
    stamp = time.strftime("%H:%M:%S")
    line = (
        f"{stamp} received from=<{msg.mail_from}> to={','.join(f'<{r}>' for r in msg.rcpts)} "
        f"size={len(msg.data)} subject={str(head.get('Subject', ''))!r} "
        f"message-id={head.get('Message-ID', '')}"
    )
    if show != "full":
        return line
    text = msg.data.decode("utf-8", "replace").replace("\r\n", "\n")
    return f"{line}\n{text}\n{'-' * 72}"


async def run_sink(host: str, port: int, show: str, out: TextIO = sys.stdout) -> None:
    def on_receive(msg: Received) -> None:
        if show != "none":
            print(describe(msg, show), file=out, flush=True)

    server = FakeSmtpServer(
        host=host, port=port, hostname="sink.postline", on_receive=on_receive, keep=False
    )
    await server.start()
    print(
        f"postline sink: listening on {host}:{server.port}; Ctrl-C stops it", file=out, flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
