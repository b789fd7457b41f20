"""The nodes' NATS connections (backends/jetstream/connect.py): spread over the servers,
and off a server that stops answering (a lost machine closes no socket) within seconds."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from postline.backends.jetstream.connect import connect, connected_index
from postline.testing.nats import NatsCluster, nats_cluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


# nats-py 2.16 leaves the socket of a connect that timed out (to the frozen server) unclosed
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_connections_spread_and_leave_a_silent_server() -> None:
    async def main(c: NatsCluster) -> None:
        conns = [await connect(c.urls) for _ in range(12)]
        try:
            on = [connected_index(nc, c.urls) for nc in conns]
            # all 12 on one server by chance: 3 * (1/3)^12, about 1 in 177,000
            assert len(set(on)) > 1, f"every connection on one server: {on}"
            frozen = on[0]
            assert frozen is not None
            proc = c.servers[frozen].proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)  # alive, sockets open, answers nothing
            try:
                mine = [nc for nc, i in zip(conns, on, strict=True) if i == frozen]
                deadline = time.monotonic() + 15.0  # nats-py's default pings: 4-6 minutes
                while time.monotonic() < deadline and any(
                    connected_index(nc, c.urls) in (frozen, None) for nc in mine
                ):
                    await asyncio.sleep(0.1)
                moved = [connected_index(nc, c.urls) for nc in mine]
                assert frozen not in moved and None not in moved, moved
            finally:
                proc.send_signal(signal.SIGCONT)
        finally:
            for nc in conns:
                await nc.close()

    with nats_cluster(3) as c:
        asyncio.run(main(c))
