"""Create (or check) the streams, the KV bucket and the Object Store bucket.

Every stream is created with ``replicas``; an existing stream with other replicas is
refused (a PubAck means "stored with the configured replication" only if it is so).
``max_age`` on the SPOOL and MSGS streams is the backstop for what ``expire`` and
settles leave behind (tombstones, messages whose last settles raced on two nodes): set
it a little above the spool's message max age.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from postline.backends.jetstream.records import Names

T = TypeVar("T")

# "no suitable peers for placement": the meta leader answers before it has heard from
# every server of a cluster that just started (or restarted), so an R3 stream created in
# that moment is refused though all 3 servers are up. This was the 1-in-7 failure of
# tests/integration/test_nats_harness.py's R3 kill test (at its first add_stream, <2 s
# after the harness saw $JS.API.INFO answer on every server). Likewise a JetStream API
# request times out while the meta group, or a stream's group, elects a leader (CI saw the
# incarnation read below time out so, as a third server joined). All are waited out.
NO_PEERS = 10005
PLACEMENT_WAIT = 30.0  # seconds a start waits for a meta leader and peers, then fails


def _waiting(exc: Exception) -> bool:
    if isinstance(exc, (TimeoutError, ServiceUnavailableError)):
        return True
    return isinstance(exc, APIError) and getattr(exc, "err_code", None) == NO_PEERS


async def placed(make: Callable[[], Awaitable[T]]) -> T:
    """``make()``, again while the meta group elects a leader or counts its peers."""
    deadline = time.monotonic() + PLACEMENT_WAIT
    while True:
        try:
            return await make()
        except (TimeoutError, APIError) as exc:
            if not _waiting(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    await placed(lambda: _ensure_stream(js, config))


async def _state_bucket(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except NotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, replicas=replicas)
        return await js.create_key_value(config)


async def _body_store(js: JetStreamContext, bucket: str, replicas: int) -> ObjectStore:
    try:
        return await js.object_store(bucket)
    except NotFoundError:
        config = api.ObjectStoreConfig(replicas=replicas)
        return await js.create_object_store(bucket, config=config)


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)  # the same config again after a lost reply: no error
        return
    if info.config.num_replicas != config.num_replicas:
        raise RuntimeError(
            f"stream {config.name} has {info.config.num_replicas} replicas,"
            f" configured {config.num_replicas}"
        )


async def ensure_all(
    js: JetStreamContext, names: Names, replicas: int, max_age: float
) -> tuple[KeyValue, ObjectStore]:
    limits = api.RetentionPolicy.LIMITS
    file = api.StorageType.FILE
    await ensure_stream(js, api.StreamConfig(
        name=names.spool, subjects=[names.deliveries], retention=limits, storage=file,
        num_replicas=replicas, max_msgs_per_subject=1, max_age=max_age,
    ))  # fmt: skip
    await ensure_stream(js, api.StreamConfig(
        name=names.msgs, subjects=[f"{names.prefix}.m.>", f"{names.prefix}.b.>"],
        retention=limits, storage=file, num_replicas=replicas, max_msgs_per_subject=1,
        max_age=max_age,
    ))  # fmt: skip
    await ensure_stream(js, api.StreamConfig(
        name=names.events, subjects=[names.event_subject], retention=limits, storage=file,
        num_replicas=replicas,
    ))  # fmt: skip
    kv = await placed(lambda: _state_bucket(js, names.state, replicas))
    obs = await placed(lambda: _body_store(js, names.bodies, replicas))
    return kv, obs


async def incarnation(kv: KeyValue) -> int:
    """A number no other open of this spool got (a KV counter, compare-and-set)."""
    while True:
        try:  # a timed-out create or update below reads again here, and goes on
            entry = await placed(lambda: kv.get("incarnation"))
        except NotFoundError:
            try:
                await kv.create("incarnation", b"1")
                return 1
            except Exception:  # another node created it first
                continue
        n = int(entry.value or b"0") + 1
        try:
            await kv.update("incarnation", str(n).encode(), last=entry.revision)
            return n
        except Exception:  # another node took n
            continue
