"""Another datacenter's events into this datacenter's event log, from the mirror of its
EVENTS stream here (multidc.py), so this datacenter's pipeline (activity, statistics,
webhooks) sees the events of every datacenter: any datacenter answers queries on all.

One node per datacenter imports continuously (linked.py, the owner of the peer among
the live nodes); ``postline failover`` imports the rest once the peer is lost
(adopt.py). Both go through :func:`import_events`:

* each events message is appended as it was (same batch), with the header ``PL-Origin:
  <peer>``; messages that already carry one (events the peer imported from elsewhere,
  this datacenter's own among them) are skipped, so nothing goes round in circles;
* the message id is ``i<peer>.<sequence>``: two importers racing (a change of owner, a
  failover while a node still imports) store one copy within the duplicate window;
* the progress (the last mirror sequence imported) is KV ``imported.<peer>`` in this
  datacenter's STATE bucket, only ever raised (compare-and-set).
"""

from __future__ import annotations

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from postline.backends.jetstream.events import COUNT
from postline.backends.jetstream.publish import Out, Publisher
from postline.backends.jetstream.records import ORIGIN, Names, kv_key
from postline.cluster.multidc import prefix

BATCH = 256  # events messages read and appended per round trip group


def progress_key(peer: str) -> str:
    return "imported." + kv_key(peer)


async def imported(kv: KeyValue, peer: str) -> tuple[int, int | None]:
    """(last mirror sequence imported, its KV revision or None)."""
    try:
        entry = await kv.get(progress_key(peer))
    except KeyNotFoundError:
        return 0, None
    return msgspec.json.decode(entry.value or b"0", type=int), entry.revision


async def _raise(kv: KeyValue, peer: str, seq: int) -> None:
    """Set the progress to ``seq`` unless it is already as high."""
    for _ in range(5):
        got, revision = await imported(kv, peer)
        if got >= seq:
            return
        try:
            if revision is None:
                await kv.create(progress_key(peer), msgspec.json.encode(seq))
            else:
                await kv.update(progress_key(peer), msgspec.json.encode(seq), last=revision)
            return
        except Exception:  # KeyWrongLastSequenceError, or the key created meanwhile
            continue  # another importer moved it: read again


async def import_events(
    js: JetStreamContext, kv: KeyValue, own: Names, pub: Publisher, peer: str, limit: int = 0
) -> int:
    """Import the mirror's events past the progress (at most ``limit`` messages if
    given); return how many events were appended."""
    mirror = Names(prefix(peer))
    after, _ = await imported(kv, peer)
    seq, events, pending, seen = after, 0, [], 0
    while not limit or seen < limit:
        try:
            msg = await js.get_msg(
                mirror.events, seq=seq + 1, subject=mirror.event_subject, next=True
            )
        except NotFoundError:
            break
        assert msg.seq is not None
        seq, seen = msg.seq, seen + 1
        headers = msg.headers or {}
        if ORIGIN in headers:
            continue
        count = headers.get(COUNT, "1")
        out_headers = ((COUNT, count), (ORIGIN, peer))
        pending.append(Out(own.event_subject, msg.data or b"", f"i{peer}.{seq}", out_headers))
        events += int(count)
        if len(pending) >= BATCH:
            await pub.put_all(pending)
            pending = []
    if pending:
        await pub.put_all(pending)
    if seq > after:
        await _raise(kv, peer, seq)
    return events
