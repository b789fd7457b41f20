"""Membership (cluster/membership.py) on a real nats-server: a node cut off from NATS
(its link closed: connects refused) keeps its last view of the others, stops taking over
work once its own heartbeats fail and owns nothing before the others count it gone; the
others drop it after the TTL; back, it waits WARM_UP before owning again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postline.backends.jetstream.connect import connect
from postline.cluster import membership as ms
from postline.cluster.membership import Membership, owner
from postline.testing.listeners import close_listener
from postline.testing.nats import free_ports, nats_cluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


class Link:
    """A node's link to NATS, cut by closing it: the listener too, so that reconnects are
    refused before a socket exists (nats-py 2.16 leaks the socket of a reconnect that
    fails after connecting, which testing/tcp_proxy.py's cut would cause)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_ports(1)[0]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            await close_listener(self._server)  # no socket left open (testing/listeners.py)
            self._server = None
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, uwriter}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, uwriter), pipe(ureader, writer))


async def _until(cond: Callable[[], bool], what: str, timeout: float = 12.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_a_cut_off_node_takes_nothing_over_and_keeps_its_view(tmp_path: Path) -> None:
    async def main(url: str, port: int) -> None:
        link = Link(port)
        await link.up()
        na = await connect([url])
        nb = await connect([f"nats://127.0.0.1:{link.port}"])
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        dead = "n0-000000"  # b's previous run, crashed: its leases are b's to take over
        (tmp_path / "b" / ms.MEMBER_FILE).write_text(dead + "\n")
        a = await Membership.join(na.jetstream(), "M_NODES", "na", 1, tmp_path / "a")
        b = await Membership.join(nb.jetstream(), "M_NODES", "nb", 1, tmp_path / "b")
        try:
            # a queue the crashed run owned (with a beside it): orphaned for b
            domain = next(
                d
                for d in (f"d{i}.example" for i in range(200))
                if owner({a.node, dead}, "t", d) == dead
            )
            await _until(lambda: a.live == b.live == {a.node, b.node}, "both see both")
            assert b.orphaned("t", domain)
            mine = next(
                d
                for d in (f"e{i}.example" for i in range(200))
                if owner({a.node, b.node}, "t", d) == b.node
            )
            await _until(lambda: b.owns("t", mine), "b owns its queue after warming up")

            await link.cut()  # b hears nothing from NATS, a goes on
            await _until(lambda: b.beat_age() > ms.STALE_BEAT, "b's heartbeats fail")
            assert not b.orphaned("t", domain), "a cut-off node took work over"
            await _until(lambda: b.beat_age() > ms.LOST, "b's heartbeats fail longer")
            assert not b.owns("t", mine), "a node the others may count gone owned a queue"
            await _until(lambda: a.live == {a.node}, "a drops b after the TTL")
            assert b.live == {a.node, b.node}  # failed reads kept b's last view

            await link.up()
            await _until(lambda: b.beat_age() < ms.BEAT, "b's heartbeats acknowledged")
            assert not b.owns("t", mine)  # warming up again: a may still think it owns it
            await _until(lambda: a.live == {a.node, b.node}, "a sees b back")
            await _until(lambda: b.owns("t", mine), "b owns its queue again")
            assert b.live == {a.node, b.node}
        finally:
            await b.leave()
            await a.leave()
            await nb.close()
            await na.close()
            await link.cut()

    with nats_cluster(1) as c:
        asyncio.run(main(c.urls[0], c.servers[0].port))
