"""The event log on JetStream: events batched into messages of one Limits stream.

One NATS message per event cannot reach high rates from Python, so ``append`` packs the
events of a call into as few messages as fit (EVENTS_MAX_BYTES, EVENTS_MAX_COUNT). An
event's offset is ``stream sequence << 16 | its index in the message``: offsets grow with
the stream and are never reused. ``Nats-Msg-Id`` is a hash of the events, so a retried
append is stored once.

Readers read through durable consumers of their own (cursors.py, ``read_as``);
``read`` gets messages directly by sequence (replays, a webhook's first fill, prune).
Consumer offsets live in the KV bucket (``offset.<consumer>``), not in JetStream consumer
ack floors: the EventLog contract is "read forward from a committed offset", which a KV
value states exactly and any node can read.

``prune`` keeps a watermark (KV ``prune``: the highest pruned offset and how many events
went) and removes the oldest events up to the first one that is newer than ``before`` or
above ``upto``: retention is by age and the log is in time order, so that is the prefix
the memory spool removes too. Whole messages below the watermark are purged from the
stream; a partly pruned message stays until its last event goes, its pruned events are
skipped by ``read``.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Sequence

import msgspec
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from postline.backends.jetstream.cursors import Cursors
from postline.backends.jetstream.publish import Out, Publisher
from postline.backends.jetstream.records import (
    EVENTS_MAX_BYTES,
    EVENTS_MAX_COUNT,
    Names,
    content_id,
    encode,
    events_of,
    kv_key,
    offset,
    split_offset,
)
from postline.model.events import EventRecord

COUNT = "PL-Count"


class PruneMark(msgspec.Struct, array_like=True):
    upto: int = 0  # highest pruned offset
    pruned: int = 0  # events pruned in all


def pack(names: Names, events: Sequence[EventRecord]) -> list[Out]:
    """The messages that carry ``events``, in order."""
    outs: list[Out] = []
    chunk: list[EventRecord] = []
    size = 0
    for e in events:
        n = len(e.data) + len(e.meta) + len(e.email) + len(e.sg_message_id) + 64
        if chunk and (size + n > EVENTS_MAX_BYTES or len(chunk) == EVENTS_MAX_COUNT):
            outs.append(_out(names, chunk))
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        outs.append(_out(names, chunk))
    return outs


def _out(names: Names, chunk: list[EventRecord]) -> Out:
    data = encode(chunk)
    return Out(names.event_subject, data, "e" + content_id(data), ((COUNT, str(len(chunk))),))


class JetStreamEventLog:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        names: Names,
        pub: Publisher,
        cursors: Cursors | None = None,
    ) -> None:
        self.js, self._kv, self.names, self.pub = js, kv, names, pub
        self.cursors = cursors

    @property
    def kv(self) -> KeyValue:
        """The datacenter's STATE bucket (consumer offsets, the prune mark)."""
        return self._kv

    async def append(self, events: Sequence[EventRecord]) -> None:
        if events:
            await self.pub.put_all(pack(self.names, events))

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        out: list[tuple[int, EventRecord]] = []
        if limit <= 0:
            return out
        after = max(after, (await self._mark())[0].upto)
        seq, skip = split_offset(after)
        first = True
        while len(out) < limit:
            try:
                msg = await self.js.get_msg(
                    self.names.events, seq=max(seq, 1), subject=self.names.event_subject,
                    next=True,
                )  # fmt: skip
            except NotFoundError:
                break
            assert msg.seq is not None and msg.data is not None
            events = events_of(msg.data, msg.headers)
            start = skip + 1 if first and msg.seq == seq and after > 0 else 0
            for i in range(start, len(events)):
                out.append((offset(msg.seq, i), events[i]))
                if len(out) == limit:
                    break
            first, seq = False, msg.seq + 1
        return out

    async def read_as(self, reader: str, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        """``read`` through ``reader``'s durable consumer (cursors.py), when there are
        consumers; the same events either way."""
        if self.cursors is None:
            return await self.read(after, limit)
        if limit <= 0:
            return []
        after = max(after, (await self._mark())[0].upto)
        return await self.cursors.read(reader, after, limit)

    async def committed(self, consumer: str) -> int:
        try:
            entry = await self._kv.get("offset." + kv_key(consumer))
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def commit(self, consumer: str, offset: int) -> None:
        await self._kv.put("offset." + kv_key(consumer), str(offset).encode())

    async def head(self) -> int:
        info = await self.js.stream_info(self.names.events)
        last = int(info.state.last_seq)
        if last == 0:
            return 0
        try:
            msg = await self.js.get_msg(self.names.events, seq=last)
        except NotFoundError:  # purged: every event of it was pruned
            return (await self._mark())[0].upto
        count = int((msg.headers or {}).get(COUNT, "1"))
        return offset(last, count - 1)

    async def offset_at(self, ts: float) -> int:
        """The offset after which the events stored at or after ``ts`` (unix seconds,
        the server's clock) begin: a consumer made to deliver from that time tells the
        last stream sequence before it (a webhook made on another datacenter's node
        starts here, webhooks/dispatcher.py)."""
        when = datetime.datetime.fromtimestamp(ts, datetime.UTC)
        info = await self.js.add_consumer(
            self.names.events,
            api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=when,
                ack_policy=api.AckPolicy.NONE,
                filter_subject=self.names.event_subject,
                inactive_threshold=30.0,
            ),
        )
        try:
            before = info.delivered.stream_seq if info.delivered is not None else 0
        finally:
            with contextlib.suppress(Exception):  # it goes after inactive_threshold anyway
                await self.js.delete_consumer(self.names.events, info.name)
        return offset(before, EVENTS_MAX_COUNT) if before else 0  # past all of it

    async def pruned(self) -> int:
        return (await self._mark())[0].pruned

    async def prune(self, upto: int, before: float, limit: int) -> int:
        mark, revision = await self._mark()
        gone = 0
        new_upto = mark.upto
        for off, e in await self.read(mark.upto, max(limit, 0)):
            if off > upto or e.ts >= before:
                break
            gone, new_upto = gone + 1, off
        if gone == 0:
            return 0
        value = encode(PruneMark(new_upto, mark.pruned + gone))
        if revision is None:
            await self._kv.create("prune", value)
        else:
            await self._kv.update("prune", value, last=revision)  # two pruners: one fails
        seq, _ = split_offset(new_upto)
        # messages below seq; 2.9.10 purges everything for a seq <= first_seq, so only ask
        # when something below seq is still there
        if seq > (await self.js.stream_info(self.names.events)).state.first_seq:
            await self.js.purge_stream(self.names.events, seq=seq)
        return gone

    async def _mark(self) -> tuple[PruneMark, int | None]:
        try:
            entry = await self._kv.get("prune")
        except KeyNotFoundError:
            return PruneMark(), None
        return msgspec.msgpack.decode(entry.value or b"", type=PruneMark), entry.revision
