"""The audit's reads of a cluster's JetStream (cluster/audit.py): the event log from its
oldest kept event, in pages, and every live delivery of the SPOOL stream. Events imported
from another datacenter are audited for the webhooks here only (their recipients are in
that datacenter's spool, and its own audit checks them), and not at all when that
datacenter posts them itself from the same database (cluster/origins.py)."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from postline.backends.jetstream.events import JetStreamEventLog
from postline.backends.jetstream.index import follow_deliveries
from postline.backends.jetstream.records import DeliveryState, Names
from postline.events.audit import Auditor, Row
from postline.model.domain import email_key

PAGE = 10_000  # events a read asks for


async def live_deliveries(js: JetStreamContext, names: Names) -> set[tuple[str, str]]:
    """(sg_message_id, email key) of every delivery not tombstoned: queued or in flight."""
    live: dict[int, tuple[str, str]] = {}

    def on_state(seq: int, did: int, msg: Msg, state: DeliveryState | None) -> None:
        if state is None:
            live.pop(did, None)
        else:
            live[did] = (state.sg_message_id, email_key(state.rcpt))

    sub = await follow_deliveries(js, names, on_state)
    await sub.unsubscribe()
    return set(live.values())


class EventFeed:
    """Feeds an :class:`Auditor` the log's events in order, from where the last call
    stopped: only those from the first at or after ``since`` (like the embedded audit's
    SELECT_EVENTS_SINCE)."""

    def __init__(
        self,
        log: JetStreamEventLog,
        since: float | None,
        posted_elsewhere: frozenset[str] = frozenset(),
    ) -> None:
        self._log = log
        # datacenters that post their own events from this database (cluster/origins.py)
        self._elsewhere = posted_elsewhere
        self._since = since
        self._after = 0
        self._started = since is None
        self.oldest: float | None = None  # the oldest event the log still holds
        self.read = 0

    async def feed(self, auditor: Auditor) -> int:
        """Read to the log's end now; the number of events read."""
        before = self.read
        while page := await self._log.read(self._after, PAGE):
            if self.oldest is None:
                self.oldest = page[0][1].ts
            own: list[Row] = []
            imported: list[Row] = []  # another datacenter's spool holds their recipients
            for off, e in page:
                if not self._started and self._since is not None and e.ts >= self._since:
                    self._started = True
                if self._started and e.origin not in self._elsewhere:
                    row = (off, e.ts, e.tenant, e.event, e.email, e.sg_message_id)
                    (imported if e.origin else own).append(row)
            auditor.feed(own)
            auditor.feed(imported, recipients=False)
            self._after = page[-1][0]
            self.read += len(page)
        return self.read - before
