"""The node ↔ relay worker link: requests and replies in both directions over one socket.

The relay worker (smtp/worker.py) speaks SMTP; the node owns the spool, the keys and the
metrics. Between them runs one connected Unix socket (a socketpair made by the node) with
length-prefixed msgpack frames::

    u32 length | [kind, id, name, body]

``kind`` 0 is a request (``name`` the method), 1 a reply, 2 an error reply (``name`` the
error's kind, ``body`` its detail). ``body`` stays raw msgpack until the receiver knows
its type (``msgspec.Raw``), so each method decodes straight into its own type
(``AcceptBatch``, ``ApiKey``...). Requests are served concurrently (a task each): many
sessions' accepts wait for the same group commit.

Writes go straight to the socket under a lock, so a reply may also be sent from another
thread (:meth:`Link.reply_from_thread`: the node answers an accept from the spool's writer
thread the moment it commits). A request the owner can answer without a task (``fast``)
is handed over as it is read.

A broken link fails every call still waiting with :class:`LinkClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

log = logging.getLogger("postline.smtp")

REQUEST, REPLY, ERROR = 0, 1, 2
MAX_FRAME = 64 * 1024 * 1024  # an accept carries at most a 256 KiB body in memory (SPILL_BYTES)
_LEN = struct.Struct(">I")


class Frame(msgspec.Struct, array_like=True):
    kind: int
    id: int
    name: str
    body: msgspec.Raw


class LinkClosed(ConnectionError):
    """The other side is gone; the call's outcome is unknown."""


class RemoteError(Exception):
    """The other side's handler raised; ``kind`` names what (see the handlers)."""

    def __init__(self, kind: str, detail: msgspec.Raw) -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail


class Failure(Exception):
    """Raised by a handler to send an error reply of this kind with this detail."""

    def __init__(self, kind: str, detail: Any = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail


Handler = Callable[[str, msgspec.Raw], Awaitable[Any]]
Fast = Callable[[Frame], bool]  # True: taken (the owner replies, maybe from another thread)
SEND_WAIT = 5.0  # seconds a send waits for room in a full socket buffer before giving up

_encode = msgspec.msgpack.Encoder().encode
_decode_frame = msgspec.msgpack.Decoder(Frame).decode
_NONE = msgspec.Raw(_encode(None))


def _frame(kind: int, rid: int, name: str, body: Any) -> bytes:
    raw = body if isinstance(body, msgspec.Raw) else msgspec.Raw(_encode(body))
    data = _encode(Frame(kind, rid, name, raw))
    return _LEN.pack(len(data)) + data


class Link:
    def __init__(
        self,
        sock: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        *,
        fast: Fast | None = None,
    ) -> None:
        """``reader``/``writer``: ``asyncio.open_unix_connection(sock=sock)``'s. Writes go to
        a duplicate of ``sock`` (see _write), closed under the send lock: a thread that
        replies late never writes to a descriptor number the loop has closed and reused."""
        self._reader = reader
        self._writer = writer
        self._sock = sock.dup()
        self._send_lock = threading.Lock()
        self._handler = handler
        self._fast = fast
        self._next = 0
        self._waiting: dict[int, asyncio.Future[msgspec.Raw]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._out: list[bytes] = []  # frames of this loop iteration, written in one go
        self._sock_broken = False
        self.closed = False

    async def call(self, name: str, arg: Any = None) -> msgspec.Raw:
        """Send a request; its reply's raw body (decode it with the method's type)."""
        if self.closed:
            raise LinkClosed("the link is closed")
        self._next += 1
        rid = self._next
        fut: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._send(REQUEST, rid, name, arg)
        try:
            return await fut
        finally:
            self._waiting.pop(rid, None)

    def _send(self, kind: int, rid: int, name: str, body: Any) -> None:
        data = _frame(kind, rid, name, body)
        if not self._out:  # one write per loop iteration: a group commit answers ~20 at once
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed:
            self._write(b"".join(out))

    def reply_from_thread(
        self, rid: int, result: Any = None, failure: Failure | None = None
    ) -> None:
        """Answer request ``rid`` now, from any thread (after a ``fast`` hand-over)."""
        if failure is not None:
            data = _frame(ERROR, rid, failure.kind, failure.detail)
        else:
            data = _frame(REPLY, rid, "", result if result is not None else _NONE)
        if not self.closed:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """The whole of ``data`` on the socket (non-blocking: wait for room, bounded)."""
        view = memoryview(data)
        with self._send_lock:
            if self.closed:
                return
            try:
                while view:
                    try:
                        sent = self._sock.send(view)
                    except BlockingIOError:
                        if not select.select([], [self._sock], [], SEND_WAIT)[1]:
                            raise ConnectionError("the other side does not read") from None
                        continue
                    view = view[sent:]
            except (ConnectionError, OSError) as exc:
                log.warning("relay link: send failed (%s); closing the link", exc)
                self._sock_broken = True

    async def serve(self) -> None:
        """Read frames until the other side closes; then fail what still waits."""
        read = self._reader.readexactly
        try:
            while True:
                (n,) = _LEN.unpack(await read(4))
                if n > MAX_FRAME:
                    log.error("relay link: frame of %d octets; closing the link", n)
                    break
                frame = _decode_frame(await read(n))
                if self._sock_broken:
                    break
                if frame.kind == REQUEST and self._fast is not None and self._fast(frame):
                    continue
                if frame.kind == REQUEST:
                    task = asyncio.get_running_loop().create_task(self._answer(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    continue
                fut = self._waiting.get(frame.id)
                if fut is None or fut.done():
                    continue
                if frame.kind == REPLY:
                    fut.set_result(frame.body)
                else:
                    fut.set_exception(RemoteError(frame.name, frame.body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def _answer(self, frame: Frame) -> None:
        try:
            result = await self._handler(frame.name, frame.body)
        except Failure as exc:
            kind, rid, name, body = ERROR, frame.id, exc.kind, exc.detail
        except Exception as exc:
            log.exception("relay link: %s failed", frame.name)
            kind, rid, name, body = ERROR, frame.id, "error", str(exc)
        else:
            kind, rid, name, body = REPLY, frame.id, "", result if result is not None else _NONE
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._send(kind, rid, name, body)

    def close(self) -> None:
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
            self._sock.close()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(LinkClosed("the other side of the relay link is gone"))
        self._waiting.clear()
        with contextlib.suppress(Exception):
            self._writer.close()
