"""The event log: an append-only sequence of events with offsets.

Appends happen inside spool transactions (``Spool.accept`` / ``Spool.settle``), so an event
exists exactly when the state change it describes is durable. Consumers (webhooks,
activity store, stats, suppressions) read forward from their own committed offset.
On JetStream this is a Limits-retention stream; offsets are stream sequences.
"""

from __future__ import annotations

from typing import Protocol

from postline.model.events import EventRecord


class EventLog(Protocol):
    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        """Events with offset > ``after``, oldest first, at most ``limit``."""
        ...

    async def committed(self, consumer: str) -> int:
        """The consumer's committed offset (0 when it has none)."""
        ...

    async def commit(self, consumer: str, offset: int) -> None: ...

    async def head(self) -> int:
        """The offset of the newest event ever appended (0 for an empty log); pruning
        does not lower it."""
        ...

    async def prune(self, upto: int, before: float, limit: int) -> int:
        """Remove at most ``limit`` of the oldest events with offset <= ``upto`` and
        ``ts`` < ``before``; return how many went (events/retention.py)."""
        ...


async def read_as(
    log: EventLog, reader: str, after: int, limit: int
) -> list[tuple[int, EventRecord]]:
    """``log.read`` for the named reader: through its own durable consumer where the log
    has them (JetStream: backends/jetstream/cursors.py), the same events either way."""
    named = getattr(log, "read_as", None)
    if named is None:
        return await log.read(after, limit)
    events: list[tuple[int, EventRecord]] = await named(reader, after, limit)
    return events
