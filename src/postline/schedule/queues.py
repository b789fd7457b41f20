"""The scheduled-queue index: which (tenant, domain) queue is due next.

KumoMTA's *scheduled queue* tier, kept in memory as a heap of ``(next_due, queue)``; the
messages themselves stay in the spool. ``arm`` only ever moves a queue's time earlier
(a new accept, a deferral coming due sooner); ``reset`` sets it to what the spool says
after a lease. Entries made stale by a later ``arm``/``reset`` are skipped lazily on pop.
"""

from __future__ import annotations

import heapq
import math

Queue = tuple[str, str]  # (tenant, domain)


class QueueIndex:
    def __init__(self) -> None:
        self._due: dict[Queue, float] = {}
        self._heap: list[tuple[float, Queue]] = []

    def __len__(self) -> int:
        return len(self._due)

    def arm(self, queue: Queue, when: float) -> None:
        """The queue has work due at ``when`` (keeps the earlier of the two times)."""
        current = self._due.get(queue, math.inf)
        if when < current:
            self._set(queue, when)

    def reset(self, queue: Queue, when: float | None) -> None:
        """The queue's next due time is exactly ``when`` (None: the queue is empty)."""
        if when is None:
            self._due.pop(queue, None)
        else:
            self._set(queue, when)

    def next_time(self) -> float | None:
        """When the earliest queue is due (None when nothing is queued)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int = 1_000_000) -> list[Queue]:
        """Remove and return the queues due at ``now`` (their entries must be re-set)."""
        out: list[Queue] = []
        while self._heap and len(out) < limit:
            when, queue = self._heap[0]
            if self._due.get(queue) != when:
                heapq.heappop(self._heap)
                continue
            if when > now:
                break
            heapq.heappop(self._heap)
            del self._due[queue]
            out.append(queue)
        return out

    def due_at(self, queue: Queue) -> float | None:
        return self._due.get(queue)

    def _set(self, queue: Queue, when: float) -> None:
        self._due[queue] = when
        heapq.heappush(self._heap, (when, queue))
        if len(self._heap) > 4 * len(self._due) + 64:
            self._compact()

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        self._heap = [(w, q) for q, w in self._due.items()]
        heapq.heapify(self._heap)
