"""The test servers (the fake destination, the webhook receiver) stop without leaving a
socket open when a connection arrives as they stop. Python 3.11's asyncio drops the socket
of a connection accepted just before its server closed, unclosed; the warning came later,
as an error in whatever test the garbage collector ran during (a property test failed so
once in a full run). testing/listeners.py closes them the safe way."""

from __future__ import annotations

import contextlib
import gc
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.webhooks.receiver import WebhookReceiver


@contextlib.contextmanager
def fake_destination() -> Iterator[int]:
    server = FakeSmtpServer()
    with running_in_thread(server):
        yield server.port


@contextlib.contextmanager
def webhook_receiver() -> Iterator[int]:
    with WebhookReceiver() as receiver:
        yield receiver.port


@pytest.mark.parametrize("serve", [fake_destination, webhook_receiver])
def test_stopping_while_connections_arrive_leaves_no_socket_open(
    serve: Callable[[], contextlib.AbstractContextManager[int]],
) -> None:
    held: list[socket.socket] = []

    def connect(port: int, delay: float) -> None:
        time.sleep(delay)
        for _ in range(5):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))

    rng = random.Random(7)
    try:
        # measured before the fix: ~70 of 100 stops of the fake destination and 80 of 100
        # of the receiver left a socket open
        for _ in range(100):
            with serve() as port:
                client = threading.Thread(target=connect, args=(port, rng.uniform(0, 0.002)))
                client.start()
                time.sleep(rng.uniform(0, 0.002))
            client.join()
            gc.collect()  # an unclosed socket warns here: an error (pyproject filterwarnings)
    finally:
        for s in held:
            s.close()
