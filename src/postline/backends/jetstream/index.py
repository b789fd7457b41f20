"""This node's view of every delivery in the SPOOL stream, kept by stream sequence.

Fed by this node's own acknowledged writes and by an ordered consumer over the stream
(``last_per_subject`` at start, then every change any node makes), so a write is visible
here as soon as it is acknowledged and other nodes' writes shortly after. A change older
than what is known (a lower sequence for the same delivery) is ignored, so the two feeds
may interleave in any order. Tombstoned deliveries are remembered until the consumer has
passed the tombstone, so an older state arriving late cannot resurrect them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from postline.backends.jetstream.records import DeliveryState


@dataclass(slots=True)
class Entry:
    state: DeliveryState
    seq: int
    subject: str
    # the spool run (incarnation) that wrote this state, from its message id; "" unknown.
    # A lease this run wrote is never another node's to take over (cluster/backends.py)
    writer: str = ""


def writer_of(msg_id: str | None) -> str:
    """The writer named by a write's message id (``<kind><delivery>.<seq>.<node>``)."""
    parts = (msg_id or "").split(".")
    return parts[2] if len(parts) == 3 else ""


class Index:
    def __init__(self) -> None:
        self.by_id: dict[int, Entry] = {}
        self.queues: dict[tuple[str, str], set[int]] = {}
        self.message_refs: dict[int, int] = {}
        self.body_refs: dict[int, int] = {}
        self._gone: dict[int, int] = {}  # delivery id -> sequence of its tombstone

    def get(self, delivery_id: int) -> Entry | None:
        return self.by_id.get(delivery_id)

    def apply(
        self,
        delivery_id: int,
        seq: int,
        subject: str,
        state: DeliveryState | None,
        writer: str = "",
    ) -> None:
        """Record the delivery's state at ``seq`` (None: settled) unless newer is known."""
        old = self.by_id.get(delivery_id)
        if (old is not None and old.seq >= seq) or self._gone.get(delivery_id, 0) >= seq:
            return
        if old is not None:
            self._remove(old.state)
        if state is None:
            self._gone[delivery_id] = seq
            return
        self._gone.pop(delivery_id, None)
        self.by_id[delivery_id] = Entry(state, seq, subject, writer)
        self.queues.setdefault((state.tenant, state.domain), set()).add(delivery_id)
        self.message_refs[state.message_id] = self.message_refs.get(state.message_id, 0) + 1
        self.body_refs[state.body_id] = self.body_refs.get(state.body_id, 0) + 1

    def passed(self, seq: int) -> None:
        """The stream consumer delivered everything up to ``seq``: forget older tombstones."""
        if self._gone:
            self._gone = {d: s for d, s in self._gone.items() if s > seq}

    def queue(self, tenant: str, domain: str) -> Iterator[Entry]:
        for did in self.queues.get((tenant, domain), ()):
            yield self.by_id[did]

    def _remove(self, s: DeliveryState) -> None:
        del self.by_id[s.delivery_id]
        q = self.queues[(s.tenant, s.domain)]
        q.discard(s.delivery_id)
        if not q:
            del self.queues[(s.tenant, s.domain)]
        for refs, key in ((self.message_refs, s.message_id), (self.body_refs, s.body_id)):
            refs[key] -= 1
            if refs[key] == 0:
                del refs[key]
