"""One destination site's live state: window, shaping, health, sessions, parked queues.

Composes the single-policy modules (ready window, concurrency feedback, token bucket,
health) so the engine and sessions ask one object; it decides nothing by itself beyond
"how much room is there" and "which queues wait for room".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from postline.config import ShapingConfig
from postline.schedule.feedback import ConcurrencyWindow
from postline.schedule.queues import Queue, QueueIndex
from postline.schedule.ready import ReadyQueue
from postline.schedule.site import SiteHealth
from postline.schedule.throttle import TokenBucket


class Share(Protocol):
    """This node's part of a site's limits when nodes share them (cluster/limits.py)."""

    def connections(self) -> int: ...


class Destination:
    def __init__(
        self,
        key: str,
        route: Any,
        shaping: ShapingConfig,
        window: int,
        clock: Callable[[], float],
        probe_interval: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        self.key = key
        self.route = route
        self.shaping = shaping
        rate = shaping.max_message_rate
        if rate > 0:
            # Never hold more than half an hour of work for a rate-limited site: leases
            # are visibility timeouts (an hour), and work must go out before they lapse.
            window = min(window, max(1, int(rate * 1800)))
        self.ready = ReadyQueue(window)
        self.concurrency = ConcurrencyWindow.for_maximum(max(1, shaping.max_connections))
        self.bucket = TokenBucket(rate, max(1.0, rate), clock)
        self.health = SiteHealth(clock, *probe_interval)
        self.sessions = 0
        self.leasing = 0
        self._parked: dict[Queue, None] = {}  # insertion-ordered: first parked, first served
        # Cluster mode: the limits hold for all nodes together and this is this node's
        # part (it also sets ``bucket``'s rate); None in embedded mode (the whole limit).
        self.share: Share | None = None

    def session_limit(self) -> int:
        limit = min(self.concurrency.limit, self.shaping.max_connections)
        return limit if self.share is None else min(limit, self.share.connections())

    def room_for_lease(self) -> int:
        """Deliveries the pump may lease for one queue of this site now (0 when suspended).

        The free room is shared between the queues waiting for it (tenants, domains of the
        site), so one queue with a big backlog cannot take every slot as it frees up.
        """
        if not self.health.can_connect():
            # One small batch serves as the probe when it is due; nothing otherwise.
            if self.health.is_probe_due() and self.ready.ready + self.leasing == 0:
                return min(8, self.ready.room())
            return 0
        room = self.ready.room() - self.leasing
        return min(room, max(16, room // (1 + len(self._parked))))

    def park(self, queue: Queue, index: QueueIndex, now: float) -> None:
        """The queue waits: for room (re-armed by :meth:`unpark`) or for the next probe."""
        delay = self.health.delay_until_probe()
        if delay is not None:
            index.arm(queue, now + max(delay, 0.01))
        else:
            self._parked[queue] = None

    def unpark(self, index: QueueIndex, now: float) -> None:
        """Room freed up: the parked queues are due again, in the order they parked.

        Waits until a worthwhile share is free (an eighth of the window) so that freed
        slots are leased in batches, not one spool transaction per settled message.
        """
        if not self._parked or self.ready.room() - self.leasing < max(1, self.ready.window // 8):
            return
        for i, queue in enumerate(self._parked):
            index.arm(queue, now + i * 1e-6)  # keeps the parking order in the heap
        self._parked.clear()
