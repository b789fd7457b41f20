"""Which datacenter stores an event: several datacenters may share one PostgreSQL
database, and then each event must reach its stores (activity, statistics, webhooks)
once, not once per datacenter.

Every datacenter's event log holds the other datacenters' events too (imports.py: each
imported message carries ``PL-Origin: <datacenter>``; the reader puts it on the
:class:`~postline.model.events.EventRecord` as ``origin``), so that a datacenter with a
database of its own has every event in its stores. With one database for several, the
rule is:

* each datacenter **registers** in the database it uses (the ``settings`` row
  ``datacenter/<name>``) when one of its nodes starts, before that node accepts any mail;
* a pipeline **skips an imported event whose origin datacenter is registered in its own
  database**: that datacenter stores it itself, from its own log, under its own offsets
  (``activity/<dc>``, ``stats/<dc>``, the webhook ledger's ``log``). An event imported
  from a datacenter with a database of its own is stored, as before;
* when a datacenter is lost, ``postline failover --from DC`` marks it failed over, and the
  pipeline of the datacenter that took it over goes on with *its* consumers from where
  they stopped, over this datacenter's mirror of its event stream (adopted.py): mirrors
  keep the stream's sequence numbers, so the offsets are the lost datacenter's own.

Since registration comes before a datacenter's first event and an event is imported
after it was made, a reader that finds an unknown origin reads the registrations again
before deciding; an origin found unregistered is believed for :data:`UNKNOWN_TTL`
seconds, and a datacenter new to a database that others already use waits
:data:`JOIN_WAIT` after registering before it accepts anything, so no reader can still
hold that belief when its first event arrives. (Moving a datacenter that already has
events into another's database is not covered: events stored before the move stay
where they were.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from postline.backends.postgres.conn import connect
from postline.model.events import EventRecord

log = logging.getLogger("postline.cluster")

PREFIX = "datacenter/"  # settings rows: one per datacenter storing its events here
UNKNOWN_TTL = 1.0  # seconds an origin read as unregistered is believed
JOIN_WAIT = UNKNOWN_TTL + 1.0  # a datacenter new to the database waits this before accepting

_REGISTER = (
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
    " RETURNING name"
)
_REGISTERED = "SELECT name FROM settings WHERE name LIKE 'datacenter/%'"

Item = tuple[int, EventRecord]


async def register(dsn: str, datacenter: str, *, wait: bool = True) -> bool:
    """Register ``datacenter`` as storing its own events in this database; True when it
    was new here (and, with ``wait``, after :data:`JOIN_WAIT`)."""
    conn = await connect(dsn)
    try:
        new = await conn.fetchval(_REGISTER, PREFIX + datacenter, repr(time.time()))
        others = await registered_with(conn) - {datacenter} if new is not None else set()
    finally:
        await conn.close()
    if new is None:
        return False
    if others:
        log.info(
            "datacenter %s shares this PostgreSQL database with %s: each stores its own"
            " events here and skips theirs",
            datacenter,
            ", ".join(sorted(others)),
        )
        if wait:  # only readers in those datacenters can hold a belief about this one
            await asyncio.sleep(JOIN_WAIT)
    return True


async def registered(dsn: str) -> set[str]:
    conn = await connect(dsn)
    try:
        return await registered_with(conn)
    finally:
        await conn.close()


async def registered_with(conn: Any) -> set[str]:
    """The datacenters storing their own events in the database of ``conn``."""
    return _names(await conn.fetch(_REGISTERED))


def _names(rows: Sequence[Any]) -> set[str]:
    return {r[0][len(PREFIX) :] for r in rows}


class Origins:
    """A pipeline's view of the registrations (module docstring), read through ``fetch``
    (a query on one of the store's pools: ``SELECT name FROM settings ...``)."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[Sequence[Any]]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.here: set[str] = set()  # datacenters storing their own events in this database
        self._read_at = float("-inf")
        self.skipped = 0  # events skipped: their own datacenter stores them

    async def refresh_for(self, events: Sequence[Item]) -> None:
        """Make sure every origin among ``events`` is known (a read of the registrations
        when one is not, unless read less than UNKNOWN_TTL ago)."""
        unknown = False
        for _, e in events:
            if e.origin and e.origin not in self.here:
                unknown = True
                break
        if unknown and self._clock() - self._read_at >= UNKNOWN_TTL:
            self.here = _names(await self._fetch(_REGISTERED))
            self._read_at = self._clock()

    def elsewhere(self, e: EventRecord) -> bool:
        """True for an event its own datacenter stores in this database (after
        :meth:`refresh_for` of its batch)."""
        return bool(e.origin) and e.origin in self.here

    async def keep(self, events: Sequence[Item]) -> list[Item]:
        """``events`` without those their own datacenter stores here."""
        await self.refresh_for(events)
        kept = [(o, e) for o, e in events if not self.elsewhere(e)]
        self.skipped += len(events) - len(kept)
        return kept
