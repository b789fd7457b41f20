"""Take over a lost datacenter's work from this datacenter's mirrors of its streams
(multidc.py made them; ``postline failover --from DC`` runs this, failover.py).

* **Deliveries**: every live delivery in the mirror of ``PL_<lost>_SPOOL`` (the last
  state per subject, not a tombstone) is written into this datacenter's own spool with a
  new delivery id, after its message record and body (same order as an accept), so this
  datacenter's nodes see it in their index and deliver it like their own mail. A
  delivery that was leased in the lost datacenter is due at once: it may have been sent
  already (a duplicate, never a loss); a deferred one keeps its due time and attempts.
  The user-visible ids (``sg_message_id``) stay as they were.
* **Events**: what the mirror of ``PL_<lost>_EVENTS`` holds beyond what this
  datacenter's nodes already imported while both were up (imports.py), appended to this
  datacenter's event log, so the pipeline here has the lost datacenter's events too.
* **Progress** in this datacenter's STATE bucket (``failover.<lost>``: the last spool
  sequence adopted; ``imported.<lost>`` for events): a second run adopts only what the
  mirror got since (nothing, once the lost datacenter is gone for good), so running it
  twice sends nothing twice. Within the duplicate window a rerun of the same writes is
  also dropped by message id.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from postline.backends.jetstream.bodies import Bodies
from postline.backends.jetstream.publish import Out, Publisher
from postline.backends.jetstream.records import (
    GONE,
    INLINE_MAX,
    DeliveryState,
    Ids,
    MessageRecord,
    Names,
    decode_delivery,
    decode_message,
    encode,
)
from postline.backends.jetstream.setup import ensure_all, incarnation
from postline.cluster.imports import import_events
from postline.cluster.multidc import failover_key, prefix

CHUNK = 500  # deliveries written per round
TIMEOUT = 5.0


class Progress(msgspec.Struct):
    spool_seq: int = 0
    at: float = 0.0  # when it ran: the lost datacenter's nodes read it (multidc.FailoverMark)


@dataclass
class Adopted:
    deliveries: int = 0  # live deliveries now in this datacenter's spool
    in_flight: int = 0  # of which were leased in the lost one (may be sent twice)
    messages: int = 0
    bodies: int = 0
    events: int = 0  # events imported into this datacenter's log
    missing: int = 0  # deliveries whose message or body the mirror lacks (not adopted)
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    """This datacenter's spool, written directly (as an accept writes it)."""

    js: JetStreamContext
    kv: KeyValue
    bodies: Bodies
    names: Names
    pub: Publisher
    ids: Ids


async def open_target(js: JetStreamContext, own: str, replicas: int, max_age: float) -> Target:
    names = Names(prefix(own))
    kv, obs = await ensure_all(js, names, replicas, max_age)
    pub = Publisher(js, TIMEOUT)
    return Target(js, kv, Bodies(js, obs, names), names, pub, Ids(await incarnation(kv)))


async def stream_messages(
    js: JetStreamContext, stream: str, subject: str, after: int
) -> AsyncIterator[Msg]:
    """The stream's messages above sequence ``after``, up to its last one now (an
    ordered consumer: one round trip per batch, not per message)."""
    info = await js.stream_info(stream)
    last = int(info.state.last_seq)
    if info.state.messages == 0 or last <= after:
        return
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
    )
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    try:
        while True:
            msg = await sub.next_msg(timeout=TIMEOUT)
            yield msg
            if msg.metadata.sequence.stream >= last:
                return
    finally:
        await sub.unsubscribe()


async def adopt(
    js: JetStreamContext, own: str, lost: str, replicas: int, max_age: float
) -> Adopted:
    target = await open_target(js, own, replicas, max_age)
    key = failover_key(lost)
    progress = await _progress(target.kv, key)
    mirror = Names(prefix(lost))
    done = Adopted()
    live: list[DeliveryState] = []
    spool_seq = progress.spool_seq
    async for msg in stream_messages(js, mirror.spool, mirror.deliveries, progress.spool_seq):
        spool_seq = max(spool_seq, msg.metadata.sequence.stream)
        if msg.data and not (msg.headers and GONE in msg.headers):
            live.append(decode_delivery(msg.data))
    obs = await _object_store(js, mirror)
    copier = Copier(js, mirror, obs, target, lost, done)
    for start in range(0, len(live), CHUNK):
        await copier.copy(live[start : start + CHUNK])
    done.events = await import_events(js, target.kv, target.names, target.pub, lost)
    await target.kv.put(key, msgspec.json.encode(Progress(spool_seq, time.time())))
    return done


async def _progress(kv: KeyValue, key: str) -> Progress:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return Progress()
    return msgspec.json.decode(entry.value or b"{}", type=Progress)


async def _object_store(js: JetStreamContext, mirror: Names) -> ObjectStore | None:
    try:
        return await js.object_store(mirror.bodies)
    except NotFoundError:
        return None


class Copier:
    """Copies deliveries with their message records and bodies, each once per run."""

    def __init__(
        self,
        js: JetStreamContext,
        mirror: Names,
        obs: ObjectStore | None,
        target: Target,
        lost: str,
        done: Adopted,
    ) -> None:
        self.js, self.mirror, self.obs, self.target = js, mirror, obs, target
        self.lost, self.done = lost, done
        self.messages: dict[int, MessageRecord | None] = {}  # old id -> new record
        self.bodies: dict[int, int | None] = {}  # old body id -> new body id

    async def copy(self, states: list[DeliveryState]) -> None:
        now = time.time()
        for mid in sorted({s.message_id for s in states} - self.messages.keys()):
            self.messages[mid] = await self._message(mid)
        outs = []
        for s in states:
            rec = self.messages[s.message_id]
            if rec is None:
                self.done.missing += 1
                continue
            did = self.target.ids.next()
            due = min(s.due_at, now) if s.leased else s.due_at
            self.done.in_flight += s.leased
            new = msgspec.structs.replace(
                s, delivery_id=did, message_id=rec.message_id, body_id=rec.body_id,
                due_at=due, leased=False,
            )  # fmt: skip
            subject = self.target.names.delivery(s.tenant, s.domain, did)
            outs.append(Out(subject, encode(new), f"f{self.lost}.d{s.delivery_id}"))
        await self.target.pub.put_all(outs)
        self.done.deliveries += len(outs)

    async def _message(self, mid: int) -> MessageRecord | None:
        """The message's record (and its body, once per body) written here: its new record."""
        try:
            msg = await self.js.get_msg(self.mirror.msgs, subject=self.mirror.message(mid))
        except NotFoundError:
            return None
        if not msg.data or (msg.headers and GONE in msg.headers):
            return None
        rec = decode_message(msg.data)
        if rec.body_id not in self.bodies:
            self.bodies[rec.body_id] = await self._body(rec)
        body_id = self.bodies[rec.body_id]
        if body_id is None:
            return None
        new = msgspec.structs.replace(rec, message_id=self.target.ids.next(), body_id=body_id)
        out = Out(self.target.names.message(new.message_id), encode(new), f"f{self.lost}.m{mid}")
        await self.target.pub.put(out)
        self.done.messages += 1
        return new

    async def _body(self, rec: MessageRecord) -> int | None:
        data = (
            await self._large(rec.body_id)
            if rec.body_in_object_store
            else await self._inline(rec.body_id)
        )
        if data is None:
            return None
        body_id = self.target.ids.next()
        if len(data) > INLINE_MAX:
            await self.target.bodies.put_large(body_id, data)
        else:
            out = self.target.bodies.inline(body_id, data)
            await self.target.pub.put(Out(out.subject, out.payload, f"f{self.lost}.b{rec.body_id}"))
        self.done.bodies += 1
        return body_id

    async def _inline(self, body_id: int) -> bytes | None:
        try:
            msg = await self.js.get_msg(self.mirror.msgs, subject=self.mirror.body(body_id))
        except NotFoundError:
            return None
        if msg.headers and GONE in msg.headers:
            return None
        return msg.data or b""

    async def _large(self, body_id: int) -> bytes | None:
        """An object of the mirrored Object Store, read chunk by chunk with direct gets:
        nats-py's ``ObjectStore.get`` subscribes by subject, which a mirror (a stream
        without subjects) does not answer."""
        if self.obs is None:
            return None
        try:
            info = await self.obs.get_info(str(body_id))
        except Exception:
            return None
        stream = f"OBJ_{self.mirror.bodies}"
        subject = f"$O.{self.mirror.bodies}.C.{info.nuid}"
        data, seq = bytearray(), 0
        while len(data) < (info.size or 0):
            try:
                msg = await self.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return None
            assert msg.seq is not None
            data += msg.data or b""
            seq = msg.seq
        digest = (info.digest or "").split("=", 1)[-1]
        if base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=") != (
            digest.rstrip("=")
        ):
            return None
        return bytes(data)
