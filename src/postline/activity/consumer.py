"""The ``activity`` consumer: every event of the log into the activity store.

Its offset lives in the store (written with the rows), so ``resume`` returns it and a
crash between the store's commit and the log's commit replays nothing. Events at or
below the stored offset (a log that hands a batch twice) are skipped and counted.
"""

from __future__ import annotations

from postline.activity.rows import batch_table
from postline.activity.store import ActivityStore
from postline.events.consumer import Batch

NAME = "activity"


class ActivityConsumer:
    name = NAME

    def __init__(self, store: ActivityStore) -> None:
        self.store = store
        self.duplicates = 0  # events handed again at or below the stored offset
        self._offset: int | None = None

    async def resume(self) -> int | None:
        self._offset = await self.store.offset()
        return self._offset

    async def handle(self, events: Batch) -> None:
        if self._offset is None:
            self._offset = await self.store.offset()
        fresh = [e for e in events if e[0] > self._offset]
        self.duplicates += len(events) - len(fresh)
        if not fresh:
            return
        last = fresh[-1][0]
        await self.store.ingest(batch_table(fresh), last)
        self._offset = last
