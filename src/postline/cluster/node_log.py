"""The event log as one node's pipeline sees it in cluster mode: the shared JetStream log,
with consumer names of this node's own (``<node id>-<consumer>``), so that every node's
worker reads the whole log into its own stores and two nodes never split one consumer's
events between them (cluster/backends.py opens it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from postline.backends.jetstream.events import JetStreamEventLog
from postline.model.events import EventRecord


class NodeEventLog:
    """An EventLog whose consumer names are this node's own (``<node>-<name>``); reads,
    head and prune are the shared log's."""

    def __init__(
        self,
        events: JetStreamEventLog,
        node: str,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.events, self.node, self._close = events, node, close

    def consumer(self, name: str) -> str:
        return f"{self.node}-{name}"

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self.events.read(after, limit)

    async def read_as(self, reader: str, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self.events.read_as(self.consumer(reader), after, limit)

    async def committed(self, consumer: str) -> int:
        return await self.events.committed(self.consumer(consumer))

    async def commit(self, consumer: str, offset: int) -> None:
        await self.events.commit(self.consumer(consumer), offset)

    async def head(self) -> int:
        return await self.events.head()

    async def offset_at(self, ts: float) -> int:
        return await self.events.offset_at(ts)

    async def prune(self, upto: int, before: float, limit: int) -> int:
        return await self.events.prune(upto, before, limit)

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
