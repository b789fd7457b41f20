"""Message bodies: up to INLINE_MAX as one message on ``<p>.b.<id>``, larger ones as an
object in the Object Store (128 KiB chunks), so no message nears max_payload.

A ``body_file`` is checked (a regular file of exactly ``size`` octets) before anything
is stored; a large one is streamed into the Object Store chunk by chunk and its stored
size checked again, so a file that changed meanwhile is removed and refused.

Inline bodies read back are kept in a small cache (``CACHE_BYTES``), and loads of one body
that run at once share one request: a body is written once and never changes, and the
recipients of one request share it. Without the cache the 100 recipients of a request
fetched their one body 100 times (`python -m bench.cluster`: loads were ~19% of a cluster
node's event loop). A tombstoned body leaves the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections import OrderedDict

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from postline.backends.jetstream.publish import Out
from postline.backends.jetstream.records import GONE, Names
from postline.spool.interface import BodyFile


def check_file(body_file: BodyFile) -> None:
    try:
        st = os.stat(body_file.path)
    except OSError as exc:
        raise ValueError(f"body file {body_file.path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"body file {body_file.path}: not a regular file")
    if st.st_size != body_file.size:
        raise ValueError(f"body file {body_file.path}: {st.st_size} octets, not {body_file.size}")


def read_small(body_file: BodyFile) -> bytes:
    try:
        with open(body_file.path, "rb") as f:
            data = f.read(body_file.size + 1)
    except OSError as exc:
        raise ValueError(f"body file {body_file.path}: {exc.strerror or exc}") from exc
    if len(data) != body_file.size:
        raise ValueError(f"body file {body_file.path}: {len(data)} octets, not {body_file.size}")
    return data


CACHE_BYTES = 16 * 1024 * 1024  # inline bodies kept after a load (LRU)


class Bodies:
    def __init__(self, js: JetStreamContext, obs: ObjectStore, names: Names) -> None:
        self._js, self._obs, self._names = js, obs, names
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._loading: dict[int, asyncio.Future[bytes | None]] = {}
        self.fetches = 0  # requests made for inline bodies (tests, profiles)

    def inline(self, body_id: int, data: bytes) -> Out:
        return Out(self._names.body(body_id), data, f"b{body_id}")

    async def put_large(self, body_id: int, data: bytes | BodyFile) -> None:
        """Store a body above INLINE_MAX in the Object Store (returns once stored)."""
        name = str(body_id)
        if isinstance(data, bytes):
            await self._obs.put(name, data)
            return
        try:
            with open(data.path, "rb") as f:
                info = await self._obs.put(name, f)
        except OSError as exc:
            raise ValueError(f"body file {data.path}: {exc.strerror or exc}") from exc
        if info.size != data.size:
            await self._obs.delete(name)
            raise ValueError(f"body file {data.path}: {info.size} octets, not {data.size}")

    async def get(self, body_id: int, in_object_store: bool) -> bytes | None:
        if in_object_store:
            try:
                return (await self._obs.get(str(body_id))).data or b""
            except NotFoundError:
                return None
        cached = self._cache.get(body_id)
        if cached is not None:
            self._cache.move_to_end(body_id)
            return cached
        pending = self._loading.get(body_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._loading[body_id] = fut
        try:
            body = await self._fetch(body_id)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiters (if any) raise it themselves
            raise
        finally:
            self._loading.pop(body_id, None)
        fut.set_result(body)
        if body is not None:
            self._keep(body_id, body)
        return body

    async def _fetch(self, body_id: int) -> bytes | None:
        self.fetches += 1
        try:
            msg = await self._js.get_msg(self._names.msgs, subject=self._names.body(body_id))
        except NotFoundError:
            return None
        if msg.headers and GONE in msg.headers:
            return None
        return msg.data or b""

    def _keep(self, body_id: int, body: bytes) -> None:
        if len(body) > CACHE_BYTES // 8:
            return
        self._cache[body_id] = body
        self._cached_bytes += len(body)
        while self._cached_bytes > CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)

    def forget(self, body_id: int) -> None:
        old = self._cache.pop(body_id, None)
        if old is not None:
            self._cached_bytes -= len(old)

    def tombstone(self, body_id: int) -> Out:
        self.forget(body_id)
        return Out(self._names.body(body_id), b"", f"gb{body_id}", ((GONE, "1"),))

    async def delete_large(self, body_id: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self._obs.delete(str(body_id))
