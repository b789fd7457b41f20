"""One HTTP/1.1 connection: httptools parsing, in-order answers, and the limits.

Hostile clients (issue 10) meet each limit at its cheapest point:

* the head is counted as it arrives: URL (414), each header line, all header bytes and
  their count (431); the line in progress is measured on the raw bytes, because httptools
  joins a header split over many reads by concatenation (quadratic) before calling us.
* when the headers are in, before any body byte is read: Host (400), the declared
  Content-Length (413) and ``admit`` (the app's auth: 401); then ``Expect: 100-continue``
  is answered. The body is refused (413) as soon as it passes ``max_body``.
* one deadline per connection on one loop timer, moved as the phase changes: a request's
  headers (header_timeout) and body (body_timeout) get 408, an idle keep-alive connection
  (idle_timeout) is closed; none while the app works on a request.
* connection caps (limits.ConnectionGuard): over one, 503 and close.
* after a refusal nothing more is parsed (a callback raises to stop the parser), so a
  pipelined request behind a refused one never runs. The refusal is written after the
  answers to earlier requests, then the write side is shut and what the client still
  sends is drained for a moment (bounded), so it reads the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from postline.api import http_wire as wire
from postline.api.deadline import Deadline
from postline.api.types import Admit, Handler, Refusal, Request, Response

if TYPE_CHECKING:
    from postline.api.http import HttpServer

log = logging.getLogger("postline.http")

_BETWEEN, _HEAD, _BODY = 0, 1, 2  # where the parser is: between requests, in a head, a body
_MAX_QUEUE = 16  # pipelined requests held before reading pauses
_LINGER_SECONDS = 2.0  # after a refusal: how long, and how much, the rest is drained
_LINGER_BYTES = 1024 * 1024
_Item = tuple[Request | Refusal, bool]  # a request or a refusal, and keep-alive


class _Stop(Exception):
    """Raised in a parser callback after a refusal: httptools stops parsing there."""


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer, app: Handler, admit: Admit | None) -> None:
        self._server = server
        self._cfg = server.cfg
        self._loop = asyncio.get_running_loop()
        self._app = app
        self._admit = admit
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._counted = False  # admitted by the connection guard
        self._queue: deque[_Item] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._phase = _BETWEEN
        self._closing = False  # refused, expired or over a cap: nothing more is parsed
        self._sleeping = False  # holding a refusal (auth failures): cancel on disconnect
        self._continue = False  # a 100 Continue waits for earlier answers
        self._held = False  # a refusal waits for earlier answers or its delay
        self._write_paused = False
        self._reading = True
        self._done_in_feed = False
        self._drained = 0
        self._deadline = Deadline(self._loop, self._expire)
        self._repeats: dict[str, list[str]] | None = None  # reset when the headers are in
        self._req: Request | None = None  # made when the headers are in
        self._body: list[bytes] = []  # reset when the request is complete
        self._new_message()
        self._phase = _BETWEEN

    def _new_message(self) -> None:
        self._phase = _HEAD
        self._url = b""
        self._headers: dict[str, str] = {}
        self._n_headers: int = 0
        self._head_bytes: int = 0
        self._line: int = 0  # bytes of the head's line in progress
        self._size: int = 0
        self._chunks: int = 0
        self._framing: int = 0  # bytes of a body that are not content: chunk sizes, trailers

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = tcp = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        peer = tcp.get_extra_info("peername")
        self._remote = peer[0] if peer else ""
        if not self._server.guard.admit(self._remote):
            self._closing = True
            tcp.write(wire.over_capacity())
            tcp.close()
            return
        self._counted = True
        self._server.connections.add(self)
        self._deadline.set(self._cfg.header_timeout)  # a silent new connection is a slow head

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._server.guard.release(self._remote)
            self._server.connections.discard(self)
        self._deadline.cancel()
        self._transport = None
        if self._sleeping and self._worker is not None:
            self._worker.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._drain(len(data))
            return
        phase, size = self._phase, self._size
        self._done_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(wire.no_upgrade())
        except httptools.HttpParserError:
            self._refuse(wire.malformed())  # no-op after a refusal that raised _Stop
        else:
            if not self._done_in_feed:
                self._measure(data, phase, size)

    def _measure(self, data: bytes, phase: int, size: int) -> None:
        """Bound what httptools is still accumulating after a read (both checks are
        skipped for a read in which a request ended: where the next one began is unknown)."""
        if self._phase == _HEAD:  # the line in progress, on the raw bytes
            nl = data.rfind(b"\n")
            self._line = self._line + len(data) if nl < 0 else len(data) - nl - 1
            if self._line > max(self._cfg.max_request_line + 32, self._cfg.max_header_line):
                self._refuse(wire.headers_too_large(self._cfg))
        elif self._phase == _BODY and phase == _BODY:  # chunk framing and trailers
            self._framing += len(data) - (self._size - size)
            if self._framing > self._cfg.max_header_bytes + 64 * self._chunks:
                self._refuse(wire.headers_too_large(self._cfg))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._new_message()
        self._deadline.set(self._cfg.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._cfg.max_request_line:
            self._stop(wire.url_too_long(self._cfg))

    def on_header(self, name: bytes, value: bytes) -> None:
        cfg = self._cfg
        size = len(name) + len(value)
        self._n_headers += 1
        self._head_bytes += size + 4
        if (
            size > cfg.max_header_line
            or self._n_headers > cfg.max_headers
            or self._head_bytes > cfg.max_header_bytes
        ):
            self._stop(wire.headers_too_large(cfg))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key not in self._headers:
            self._headers[key] = text
        elif self._repeats is None:  # repeats go to a list, joined once (no quadratic work)
            self._repeats = {key: [self._headers[key], text]}
        else:
            self._repeats.setdefault(key, [self._headers[key]]).append(text)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        headers = self._headers
        host_repeated = False
        if self._repeats is not None:
            for key, values in self._repeats.items():
                headers[key] = ", ".join(values)
            host_repeated = "host" in self._repeats
            self._repeats = None
        url = httptools.parse_url(self._url)
        req = self._req = Request(
            method=self._parser.get_method().decode("ascii"),
            path=url.path.decode("utf-8", "replace"),
            query=(url.query or b"").decode("utf-8", "replace"),
            headers=headers,
            body=b"",
            remote=self._remote,
        )
        refusal = self._judge(req, host_repeated)
        if refusal is not None:
            self._stop(refusal.response, refusal.delay)
        self._deadline.set(self._cfg.body_timeout)
        if "expect" in headers and self._wants_continue(headers["expect"]):
            self._send_continue()

    def _wants_continue(self, expect: str) -> bool:
        # Never to an HTTP/1.0 client (RFC 9110 10.1.1); other expectations are ignored.
        return expect.strip().lower() == "100-continue" and self._parser.get_http_version() == "1.1"

    def _judge(self, req: Request, host_repeated: bool) -> Refusal | None:
        if host_repeated or (
            "host" not in req.headers and self._parser.get_http_version() == "1.1"
        ):
            return Refusal(wire.host_required())
        length = req.headers.get("content-length")
        if length is not None and int(length.strip() or 0) > self._cfg.max_body:
            return Refusal(wire.content_too_large())  # llhttp let only digits through
        if self._admit is None:
            return None
        try:
            return self._admit(req)
        except Exception:  # the key store failed: the client is not at fault
            log.exception("admission failed on %s %s", req.method, req.path)
            return Refusal(wire.server_error())

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._cfg.max_body:
            self._stop(wire.content_too_large())
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        req.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._req = None  # the queue holds it now; an idle connection must not keep its body
        self._phase = _BETWEEN
        self._done_in_feed = True
        self._deadline.clear()  # the app's turn: no deadline until it has answered
        self._enqueue((req, self._parser.should_keep_alive()))

    # -- serving
    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if self._worker is None:
            self._worker = self._loop.create_task(self._serve())
        if self._held or len(self._queue) > _MAX_QUEUE:
            self._update_reading()

    async def _serve(self) -> None:
        try:
            while self._queue:
                item, keep_alive = self._queue.popleft()
                if isinstance(item, Refusal):
                    await self._give(item)
                    return
                resp = await self._server.dispatch(self._app, item)
                if self._transport is None:
                    return
                keep_alive = keep_alive and not self._server.closing
                self._transport.write(wire.encode_response(resp, keep_alive))
                if not keep_alive:
                    self._closing = True
                    self._transport.close()
                    self._deadline.set(self._cfg.idle_timeout)  # a client that never reads: abort
                    return
                if not self._reading:
                    self._update_reading()
        finally:
            self._worker = None
            self._sleeping = False
        self._after_answers()

    def _after_answers(self) -> None:
        """All answers written: a waiting 100 Continue goes out, an idle connection waits."""
        if self._continue:
            self._continue = False
            if self._transport is not None:
                self._transport.write(wire.CONTINUE)
                self._deadline.set(self._cfg.body_timeout)  # the client waited for it
        if self._phase == _BETWEEN and not self._closing:
            self._deadline.set(self._cfg.idle_timeout)

    def _send_continue(self) -> None:
        if self._worker is None and self._transport is not None:
            self._transport.write(wire.CONTINUE)
        else:
            self._continue = True

    @property
    def idle(self) -> bool:
        return self._worker is None or self._sleeping

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- refusals
    def _stop(self, resp: Response, delay: float = 0.0) -> None:
        self._refuse(resp, delay)
        raise _Stop

    def _refuse(self, resp: Response, delay: float = 0.0) -> None:
        """Answer ``resp`` (after earlier answers, after ``delay``) and close: nothing more
        of this connection is parsed."""
        if self._closing:
            return
        self._closing = True
        self._continue = False
        self._server.refused_requests += 1
        self._deadline.clear()
        if self._worker is None and not delay:
            self._answer_and_linger(resp)
        else:
            self._held = True
            self._enqueue((Refusal(resp, delay), False))

    async def _give(self, refusal: Refusal) -> None:
        if refusal.delay:
            self._sleeping = True
            await asyncio.sleep(refusal.delay)  # cancelled if the client goes away
            self._sleeping = False
        self._answer_and_linger(refusal.response)

    def _answer_and_linger(self, resp: Response) -> None:
        self._held = False
        transport = self._transport
        if transport is None:
            return
        transport.write(wire.encode_response(resp, keep_alive=False))
        if transport.can_write_eof():
            transport.write_eof()
        self._drained = 0
        self._deadline.set(_LINGER_SECONDS)
        self._update_reading()

    def _drain(self, n: int) -> None:
        self._drained += n
        if self._drained > _LINGER_BYTES and self._transport is not None:
            self._transport.abort()

    def _update_reading(self) -> None:
        """Read unless answers back up (slow reader, long pipeline) or a refusal waits."""
        if self._transport is None:
            return
        want = not (self._write_paused or self._held or len(self._queue) > _MAX_QUEUE)
        if want != self._reading:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _expire(self) -> None:
        """The deadline passed: a head or body in progress gets 408, anything else is cut."""
        if self._transport is None:
            return
        if self._closing or self._phase == _BETWEEN:  # lingered, idle or silent: just go
            if not self._closing:
                self._server.timeouts += 1
            self._transport.abort()
            return
        self._server.timeouts += 1
        self._refuse(wire.timed_out(self._cfg, "headers" if self._phase == _HEAD else "body"))
