"""The event pipeline's readers on JetStream: one durable consumer per reader.

A reader (the activity store, the statistics, each webhook's dispatcher: a
:class:`~postline.events.consumer.ConsumerRunner` by name) reads the EVENTS stream
through a durable pull consumer of its own (``PL_<hex of the name>``, filter the events
subject, ack policy none: the consumer's delivered sequence is the read position). So
the server keeps each reader's place and shows its lag (``nats consumer info``: unprocessed
messages), and a read is one pull of up to PULL_BATCH stream messages (as many as the
events it wants fill) instead of one direct get per message.

The reader's *committed* offset stays where it is (KV ``offset.<name>``, or PostgreSQL in
the same transaction as the rows it produced: activity/pg_*.py): a consumer's own ack
could not be atomic with those writes. The consumer is therefore a cursor that must agree
with the offset the caller reads after:

* a read after the offset of the last event this process handed out continues the pull
  (events of a message beyond the caller's limit wait in a buffer);
* any other offset (a new process, a commit that another node made, a read that failed
  half-way) positions the consumer: it is kept when its delivered sequence is exactly
  where the offset says reading goes on (a restart after a clean stop), else deleted and
  created again at that stream sequence (a message read only in part is delivered again;
  its events up to the offset are skipped).

Pulls are ``no_wait`` requests on a reply subject of their own: the server answers at
once with what it has and a 404 status when that was less than asked, so no pull lingers
on the server to swallow a later message. A pull that times out or fails drops the
cursor: the next read positions the consumer again, so nothing delivered to a lost reply
is skipped. Unused consumers go after INACTIVE seconds (a node that is gone for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from postline.backends.jetstream.records import Names, events_of, offset, split_offset
from postline.model.events import EventRecord

PULL_BATCH = 64  # stream messages per pull (each holds up to EVENTS_MAX_COUNT events)
PULL_TIMEOUT = 5.0  # seconds for the server's answer to one no_wait pull
INACTIVE = 24 * 3600.0  # an unused reader's consumer is removed by the server after this
COUNT = "PL-Count"  # the events in one stream message (events.py sets it)

Item = tuple[int, EventRecord]


def durable_name(reader: str) -> str:
    """A consumer name for any reader name (names allow no ``.``, ``*``, ``>`` or space);
    bounded in length, distinct per reader."""
    digest = hashlib.blake2b(reader.encode(), digest_size=6).hexdigest()
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in reader)
    return f"PL_{safe[:48]}_{digest}"


@dataclass
class _Cursor:
    name: str  # the durable consumer
    pos: int  # offset of the last event handed out
    sub: Subscription
    inbox: str
    buffer: deque[Item] = field(default_factory=deque)
    per_message: float = 0.0  # events per stream message, a running average (0: none yet)


@dataclass
class CursorStats:
    positioned: int = 0  # consumers positioned (kept or made again) for a read
    recreated: int = 0  # of which deleted and created again at a new sequence
    pulls: int = 0


class Cursors:
    """Durable consumers of one EVENTS stream, one per reader name, in this process."""

    def __init__(self, nc: Client, js: JetStreamContext, names: Names) -> None:
        self.nc, self.js, self.names = nc, js, names
        self._cursors: dict[str, _Cursor] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = CursorStats()

    async def read(self, reader: str, after: int, limit: int) -> list[Item]:
        """Events with offset > ``after`` (already raised to the prune mark by the
        caller), oldest first, at most ``limit``, through ``reader``'s consumer."""
        if limit <= 0:
            return []
        lock = self._locks.setdefault(reader, asyncio.Lock())
        async with lock:
            cur = self._cursors.get(reader)
            if cur is None or cur.pos != after:
                await self._drop(reader)
                cur = await self._position(reader, after)
            try:
                out = await self._take(cur, after, limit)
            except BaseException:
                await self._drop(reader)  # what a lost reply held is read again
                raise
            cur.pos = out[-1][0] if out else after
            return out

    async def close(self) -> None:
        for reader in list(self._cursors):
            await self._drop(reader)

    async def _take(self, cur: _Cursor, after: int, limit: int) -> list[Item]:
        out: list[Item] = []
        while cur.buffer and len(out) < limit:
            out.append(cur.buffer.popleft())
        while len(out) < limit:
            # as many messages as the events still wanted fill, by the events per message
            # seen so far: what is pulled beyond the limit waits in the buffer, so this
            # bounds it to about a message (a pull of PULL_BATCH messages of 768 KiB for a
            # reader wanting 100 events would hold ~48 MB per reader)
            n = _messages_for(limit - len(out), cur.per_message)
            msgs = await self._pull(cur, n)
            for m in msgs:
                seq = m.metadata.sequence.stream
                events = events_of(m.data, m.headers)
                cur.per_message = (
                    len(events) if cur.per_message == 0
                    else cur.per_message + (len(events) - cur.per_message) / 4
                )  # fmt: skip
                for i, event in enumerate(events):
                    off = offset(seq, i)
                    if off <= after:
                        continue  # a message read in part before: its first events
                    (out if len(out) < limit else cur.buffer).append((off, event))
            if len(msgs) < n:
                break  # the stream has no more for now
        return out

    async def _pull(self, cur: _Cursor, batch: int) -> list[Msg]:
        self.stats.pulls += 1
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.names.events}.{cur.name}"
        request = msgspec.json.encode({"batch": batch, "no_wait": True})
        await self.nc.publish(subject, request, reply=cur.inbox)
        msgs: list[Msg] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PULL_TIMEOUT
        while len(msgs) < batch:
            msg = await cur.sub.next_msg(timeout=max(0.001, deadline - loop.time()))
            status = (msg.headers or {}).get("Status")
            if status is not None:
                if status in ("404", "408"):  # no (more) messages
                    break
                if status == "100":  # heartbeat
                    continue
                raise RuntimeError(f"event consumer {cur.name}: pull answered {status}")
            msgs.append(msg)
        return msgs

    async def _position(self, reader: str, after: int) -> _Cursor:
        """The reader's consumer, delivering next the message that holds the first event
        after ``after``: kept if it already does, else made again."""
        self.stats.positioned += 1
        name = durable_name(reader)
        start = await self._next_seq(after)
        try:
            info = await self.js.consumer_info(self.names.events, name)
        except NotFoundError:
            info = None
        if info is None or info.delivered is None or info.delivered.stream_seq != start - 1:
            if info is not None:
                self.stats.recreated += 1
                await self.js.delete_consumer(self.names.events, name)
            await self.js.add_consumer(
                self.names.events,
                api.ConsumerConfig(
                    durable_name=name,
                    filter_subject=self.names.event_subject,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=api.AckPolicy.NONE,
                    inactive_threshold=INACTIVE,
                ),
            )
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        cur = _Cursor(name, after, sub, inbox)
        self._cursors[reader] = cur
        return cur

    async def _next_seq(self, after: int) -> int:
        """The stream sequence reading after ``after`` starts at: the message holding
        ``after`` when it has events past it, else the one after it."""
        if after <= 0:
            return 1
        seq, index = split_offset(after)
        try:
            msg = await self.js.get_msg(self.names.events, seq=seq)
        except NotFoundError:  # purged: all of it was pruned
            return seq + 1
        count = int((msg.headers or {}).get(COUNT, "1"))
        return seq if index < count - 1 else seq + 1

    async def _drop(self, reader: str) -> None:
        cur = self._cursors.pop(reader, None)
        if cur is not None:
            with contextlib.suppress(Exception):  # the connection is closing: nothing to do
                await cur.sub.unsubscribe()


def _messages_for(events: int, per_message: float) -> int:
    """Stream messages to pull for ``events`` more events (one while none was seen)."""
    if per_message == 0:
        return 1
    return max(1, min(PULL_BATCH, -(-events // max(1, round(per_message)))))
