"""Batches of events for one post: in order, bounded by count and size.

A post's body is the events' stored JSON objects joined into an array,
``b"[" + b",".join(data) + b"]"`` (EventRecord.data is already SendGrid's wire object;
``meta`` is never posted). A batch holds at most ``max_events`` events and at most
``max_bytes`` octets of body, except that one event larger than ``max_bytes`` goes alone
(an event is never split or dropped).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from postline.model.events import EventRecord

Item = tuple[int, EventRecord]  # (offset, event)


def body(events: Sequence[Item]) -> bytes:
    return b"[" + b",".join(e.data for _, e in events) + b"]"


def split(events: Sequence[Item], max_events: int, max_bytes: int) -> Iterator[list[Item]]:
    """Consecutive batches of ``events`` within the bounds (see the module docstring)."""
    batch: list[Item] = []
    size = 2  # the brackets
    for item in events:
        grow = len(item[1].data) + (1 if batch else 0)
        if batch and (len(batch) >= max_events or size + grow > max_bytes):
            yield batch
            batch, size, grow = [], 2, len(item[1].data)
        batch.append(item)
        size += grow
    if batch:
        yield batch


def size_of(events: Sequence[Item]) -> int:
    """The body size of ``events`` (without building it)."""
    return 2 + sum(len(e.data) for _, e in events) + max(0, len(events) - 1)
