"""One spool node's outcome counters (delivered, bounced, expired, dropped, events) in
cluster mode: kept in memory, written to the KV bucket as ``counts.<incarnation>`` at
most once a second while they change and at close, and summed over every node's key by
:meth:`OutcomeCounters.totals` (the spool's ``counts``). A crash loses up to a second of
this node's counts; nothing else depends on them."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from postline.backends.jetstream.records import encode

COUNTERS = ("delivered", "bounced", "expired", "dropped", "events")
_counts = msgspec.msgpack.Decoder(dict[str, int]).decode


class OutcomeCounters:
    def __init__(self, kv: KeyValue, node: str) -> None:
        self._kv, self._node = kv, node
        self.values = dict.fromkeys(COUNTERS, 0)
        self._dirty = asyncio.Event()

    def add(self, key: str, n: int) -> None:
        if n:
            self.values[key] += n
            self._dirty.set()

    async def flush(self) -> None:
        await self._kv.put("counts." + self._node, encode(self.values))

    async def totals(self) -> dict[str, int]:
        """This node's counters plus every other node's as last written."""
        total = dict(self.values)
        for node, values in (await self._others()).items():
            if node != self._node:
                for k, v in values.items():
                    total[k] = total.get(k, 0) + v
        return total

    async def run(self) -> None:
        """Write the counters at most once a second while they change, until ``close``
        cancels this. A cancel that comes in the same turn of the loop as the KV write's
        PubAck is dropped by Python 3.11's ``asyncio.wait_for`` inside nats-py's request
        (it returns the reply it has: bpo-42130, fixed in 3.12); the flusher then waited
        for a change that never came and ``close``, awaiting it, hung. So a cancel
        requested during the write is raised here."""
        task = asyncio.current_task()
        assert task is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            with contextlib.suppress(Exception):
                await self.flush()
            if task.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(1.0)

    async def _others(self) -> dict[str, dict[str, int]]:
        try:
            keys = await self._kv.keys()
        except NotFoundError:
            return {}
        except Exception:  # nats-py: NoKeysError when the bucket is empty
            return {}
        out = {}
        for k in keys:
            if k.startswith("counts."):
                with contextlib.suppress(NotFoundError):
                    out[k.removeprefix("counts.")] = _counts((await self._kv.get(k)).value or b"")
        return out
