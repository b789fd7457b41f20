"""The ``stats`` consumer: each batch of events folded into counter increments in Python
(metrics.Rollup), then written with the batch's last offset in one transaction
(store.StatsStore.add_events, both on the store's writer thread). ``resume`` hands the
runner that stored offset, so after a crash the next batch starts right after what was
counted: no event counted twice, none missed.
"""

from __future__ import annotations

from postline.events.consumer import Batch
from postline.stats.store import StatsStore

NAME = "stats"


class StatsConsumer:
    def __init__(self, store: StatsStore, name: str = NAME) -> None:
        self.name = name
        self.store = store
        self.events = 0  # events read since start
        self.counted = 0  # of which added to a metric

    async def resume(self) -> int | None:
        return await self.store.offset(self.name)

    async def handle(self, events: Batch) -> None:
        if not events:
            return
        rollup = await self.store.add_events(self.name, events)
        self.events += rollup.events
        self.counted += rollup.counted
