"""``postline audit`` in cluster mode: the same rule as the embedded audit (events/audit.py)
over this datacenter's JetStream event log and SPOOL stream, with the webhooks' ledgers
from PostgreSQL.

The reads cannot share one snapshot (two systems), so they run in an order that cannot
make a delivered recipient look lost, and what could still look lost is checked twice:

1. the webhooks and their ledgers (this datacenter's log), first: every event a ledger
   row covers is already in the log when the log is read next;
2. the event log, to its end;
3. every live delivery of the SPOOL stream;
4. the event log again, from where 2 stopped: a settle writes its events *before* it
   tombstones the delivery (backends/jetstream/spool.py), so a recipient settled while 3
   ran shows its terminal event here;
5. a recipient still neither terminal nor queued may be an accept in flight (its events
   stored, its delivery not yet): after ``RECHECK_DELAY`` the deliveries and the log are
   read again, and only a recipient that breaks the rule both times is reported.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]
import nats
from nats.js.errors import NotFoundError

from postline.backends.jetstream.audit import EventFeed, live_deliveries
from postline.backends.jetstream.connect import connect_briefly
from postline.backends.jetstream.events import JetStreamEventLog
from postline.backends.jetstream.publish import Publisher
from postline.backends.jetstream.records import Names
from postline.backends.postgres.conn import DB_ERRORS, redact
from postline.backends.postgres.conn import connect as pg_connect
from postline.cluster.backends import TIMEOUT, prefix
from postline.cluster.origins import registered_with
from postline.config import Config
from postline.events.audit import Auditor, Report, WebhookState
from postline.ops.context import OpsError
from postline.webhooks import pg_store
from postline.webhooks.audit_view import AuditWebhook

RECHECK_DELAY = 1.0  # seconds before a possible breach is read again


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def audit(cfg: Config, since: float | None, say: Callable[[str], None] = _say) -> Report:
    cluster = cfg.cluster
    assert cluster is not None
    try:
        conn = await pg_connect(cluster.postgres)
        try:
            hooks = await pg_store.audit_state(conn, cluster.datacenter)
            elsewhere = await registered_with(conn)
        finally:
            await conn.close()
    except asyncpg.UndefinedTableError:
        raise OpsError(
            f"no Postline tables in the database {redact(cluster.postgres)}: has a node "
            "with this [cluster] config started?"
        ) from None
    except DB_ERRORS as exc:
        raise OpsError(f"PostgreSQL: {exc}") from None
    enabled = [h for h in hooks if h.enabled]

    try:
        nc = await connect_briefly(cluster.nats, timeout=TIMEOUT)
    except Exception as exc:
        raise OpsError(f"cannot reach NATS at {', '.join(cluster.nats)}: {exc}") from None
    try:
        return await _read(
            nc.jetstream(timeout=TIMEOUT), Names(prefix(cluster)), enabled, since, say,
            frozenset(elsewhere - {cluster.datacenter}),
        )  # fmt: skip
    finally:
        await nc.close()


async def _read(
    js: nats.js.JetStreamContext,
    names: Names,
    hooks: list[AuditWebhook],
    since: float | None,
    say: Callable[[str], None],
    elsewhere: frozenset[str] = frozenset(),
) -> Report:
    try:
        kv = await js.key_value(names.state)
    except NotFoundError:
        raise OpsError(
            f"no cluster spool named {names.prefix} on this NATS: has a node with this "
            "[cluster] config started?"
        ) from None
    log = JetStreamEventLog(js, kv, names, Publisher(js, TIMEOUT))
    auditor = Auditor([await _state(log, h) for h in hooks])
    feed = EventFeed(log, since, elsewhere)

    async def check() -> Report:  # steps 2-4 of the module docstring
        await feed.feed(auditor)
        queued = await live_deliveries(js, names)
        await feed.feed(auditor)
        return auditor.report(queued, since, feed.oldest)

    started = time.monotonic()
    first = await check()
    if time.monotonic() - started > 5:
        say(f"audit: read {feed.read} events in {time.monotonic() - started:.0f} s")
    if not first.breaches:
        return first
    await asyncio.sleep(RECHECK_DELAY)
    again = await check()
    before = {(b.sg_message_id, b.email) for b in first.breaches}
    again.breaches = [b for b in again.breaches if (b.sg_message_id, b.email) in before]
    return again


async def _state(log: JetStreamEventLog, h: AuditWebhook) -> WebhookState:
    """What the dispatcher of ``h`` in this datacenter was due: from where it starts in
    this log (the webhook's creation time here: it may have been made in another
    datacenter sharing the database, dispatcher._start_offset) up to its newest range."""
    start = await log.offset_at(h.created) if h.created else h.start_offset
    ranges = [*h.delivered, *h.dead]
    return WebhookState(
        id=h.id,
        tenant=h.tenant,
        types=h.events,
        start=start,
        committed=max([start, *(last for _, last in ranges)]),
        ranges=ranges,
        dead_letters=len(h.dead_event_ids),
    )
