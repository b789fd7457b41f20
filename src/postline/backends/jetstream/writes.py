"""The conditional writes of delivery states in the SPOOL stream (cluster mode), and the
re-read after a conflict: each write carries ``Nats-Expected-Last-Subject-Sequence``
(the sequence this node's index holds for the delivery) and an id naming its writer, so
that two nodes never both win a delivery and a retried write is recognised as itself
(publish.py). What is written is applied to the index at once (index.py); what another
node overtook is a :class:`Conflict` the caller decides about (spool.py)."""

from __future__ import annotations

from collections.abc import Sequence

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from postline.backends.jetstream.index import Entry, Index, writer_of
from postline.backends.jetstream.publish import Conflict, Out, Publisher
from postline.backends.jetstream.records import GONE, DeliveryState, Names, decode_delivery, encode

MSG_ID = "Nats-Msg-Id"


class DeliveryWrites:
    def __init__(
        self, pub: Publisher, js: JetStreamContext, names: Names, index: Index, node: str
    ) -> None:
        self._pub, self._js, self._names, self.index, self._node = pub, js, names, index, node

    async def write(self, e: Entry, state: DeliveryState | None) -> None:
        """CAS-write the delivery's next state (None: tombstone) and record it."""
        (result,) = await self.write_all([(e, state)])
        if isinstance(result, Conflict):
            raise result

    async def write_all(
        self, changes: Sequence[tuple[Entry, DeliveryState | None]]
    ) -> list[Conflict | None]:
        """CAS-write each delivery's next state, pipelined (publish.cas_all); each one
        written is recorded, each that another write overtook is a Conflict."""
        outs = []
        for e, state in changes:
            did = e.state.delivery_id
            if state is None:
                out = Out(e.subject, b"", f"g{did}.{e.seq}.{self._node}", ((GONE, "1"),))
            else:  # the id names the writer: two nodes' writes are never each other's dup
                out = Out(e.subject, encode(state), f"d{did}.{e.seq}.{self._node}")
            outs.append((out, e.seq))
        results = await self._pub.cas_all(self._names.spool, outs)
        done: list[Conflict | None] = []
        for (e, state), r in zip(changes, results, strict=True):
            if isinstance(r, Conflict):
                done.append(r)
                continue
            self.index.apply(e.state.delivery_id, r, e.subject, state, self._node)
            done.append(None)
        return done

    async def reread(self, e: Entry) -> Entry | None:
        """The delivery as the stream now holds it (applied to the index); None: gone."""
        try:
            msg = await self._js.get_msg(self._names.spool, subject=e.subject)
        except NotFoundError:
            return None
        assert msg.seq is not None
        state = None if (msg.headers and GONE in msg.headers) else decode_delivery(msg.data or b"")
        writer = writer_of((msg.headers or {}).get(MSG_ID))
        self.index.apply(e.state.delivery_id, msg.seq, e.subject, state, writer)
        return None if state is None else Entry(state, msg.seq, e.subject, writer)
