"""A JetStream spool's close against a real nats-server when its counter flusher is
cancelled in the same turn of the event loop as the PubAck of its KV write arrives.

Python 3.11's ``asyncio.wait_for`` (inside nats-py's ``request``, under ``kv.put``)
returns the reply it already has and drops a cancellation that comes with it (bpo-42130,
fixed in 3.12). The flusher then went on to wait for the next change of the counters,
which never came, and ``close`` awaited it forever: the JetStream conformance suite hung in
a lease check's teardown (py-spy: ``spool.close()`` waiting on a "cancelling" ``_flusher``
parked in ``self._dirty.wait()``), about one run in three once the pipelined conditional
writes (``Publisher.cas_all``) moved the replies' timing.

The test puts the cancel exactly there, with no patching: it waits, in its own task, on
the same reply future as the flusher's ``wait_for``. The future's callbacks run in the order
they were added, so ``wait_for``'s wake-up is done (but the flusher not yet resumed) when
this task resumes and calls ``close``.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from postline.backends.jetstream.spool import open_jetstream_spool
from postline.testing.nats import NatsCluster, server_binary

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

_prefixes = itertools.count(1)


def test_close_ends_the_flusher_when_its_cancel_comes_with_the_kv_reply(
    nats_server: NatsCluster,
) -> None:
    async def run() -> int:
        spool = await open_jetstream_spool(
            nats_server.urls, replicas=1, prefix=f"CLOSE{next(_prefixes)}"
        )
        nc = spool._nc
        assert not nc._resp_map, "no request in flight before the flusher's"
        spool._count("delivered", 1)  # wakes the flusher: kv.put, a request
        async with asyncio.timeout(5):
            while not nc._resp_map:
                await asyncio.sleep(0)
        (reply,) = nc._resp_map.values()  # the flusher's KV write, waiting for its PubAck
        await reply  # resumes after wait_for's wake-up of the flusher was done
        flusher = spool._tasks[0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        # close, in this task, cancels the flusher now. Had the cancel been lost, close
        # would wait for the flusher forever; this timeout's own cancel reaches it (close
        # goes on), so the hang shows as the time close took.
        async with asyncio.timeout(10):
            await spool.close()
        assert loop.time() - started < 5, "close waited for a flusher whose cancel was lost"
        assert flusher.cancelled()
        return spool.counters.values["delivered"]

    assert asyncio.run(run()) == 1
