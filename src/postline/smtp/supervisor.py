"""The node's side of the SMTP relay worker (smtp/worker.py): bind, start, serve, restart.

- **The node binds.** Listening sockets are made here, at node start: a port in use fails
  the start with the setting named, port 0's choice is known at once (node.json), and
  connections that arrive while the worker starts or restarts wait in the kernel's
  backlog instead of being refused.
- **Started at the first connection.** A node that nobody relays through never pays the
  worker's ~0.3 s of imports (most nodes of the test suite, HTTP-only deployments); the
  first client's greeting comes that much later, once.
- **The node decides.** The worker asks ``accept`` with a finished batch and the node
  commits it exactly as it commits an HTTP request (spool, events, engine); ``auth`` is
  the node's key cache (keys created or revoked through the API apply at once). Nothing is
  acknowledged by the worker before the node's reply.
- **No event loop turn in the answer.** On the embedded spool an accept is handed to the
  group-commit writer as it is read (``SqliteSpool.accept_soon``) and answered from the
  writer thread the moment its transaction commits; the node's own bookkeeping (counters,
  the engine told of new work) follows on the loop, once per commit. Through a task and
  the loop, the answer waited for three loop turns behind the delivery engine's work:
  ~3 ms of the relay's 4.7 ms median commit wait (measured in the worker under
  ``postline bench smtp``). Other spools (cluster mode) take the loop's path.
- **A dead worker is restarted** with backoff (1 s doubling to 30 s); sessions it had
  are cut (their messages were not acknowledged: clients send again), and its counters
  (read every second) are carried over so /metrics does not go back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable

import msgspec

from postline import config as config_mod
from postline.accept.relay import Accept
from postline.api.auth import KeyCache
from postline.child import Supervised
from postline.smtp.link import REQUEST, Failure, Frame, Link, LinkClosed, RemoteError
from postline.smtp.server import STATISTICS
from postline.smtp.worker import Start
from postline.spool.interface import AcceptBatch, SpoolUnavailable, UnknownGroups

log = logging.getLogger("postline.smtp")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # then SIGKILL
STATS_TIMEOUT = 2.0
STATS_EVERY = 1.0  # the worker's counters are read this often: a crash loses at most this
GAUGE = "smtp_connections"  # not carried over a restart: the connections died with it

_decode_batch = msgspec.msgpack.Decoder(AcceptBatch).decode
_decode_str = msgspec.msgpack.Decoder(str).decode
_decode_stats = msgspec.msgpack.Decoder(dict[str, float]).decode


# Hands a batch to the spool's writer: admission may raise SpoolUnavailable at once, else
# the callback gets None (committed) or the exception, in the writer thread.
Submit = Callable[[AcceptBatch, Callable[[BaseException | None], None]], None]


def _failure(exc: BaseException) -> Failure:
    if isinstance(exc, SpoolUnavailable):
        return Failure("unavailable", exc.reason)
    if isinstance(exc, UnknownGroups):
        return Failure("unknown_groups", list(exc.group_ids))
    log.error("storing a relayed message failed", exc_info=exc)
    return Failure("error", str(exc))


class RelayWorker(Supervised):
    what = "SMTP relay worker"

    def __init__(
        self,
        cfg: config_mod.Config,
        accept: Accept,
        keys: KeyCache,
        *,
        submit: Submit | None = None,
        accepted: Callable[[AcceptBatch], None] | None = None,
    ) -> None:
        """``accept``: the loop's path (store, then the node's bookkeeping). ``submit`` and
        ``accepted``: the direct path, when the spool has one (the bookkeeping then runs
        on the loop after each commit)."""
        super().__init__(log)
        self.cfg = cfg
        self._accept = accept
        self._keys = keys
        self._submit = submit
        self._accepted = accepted
        self._done: list[AcceptBatch] = []  # committed, bookkeeping not yet done (lock)
        self._done_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[tuple[socket.socket, bool]] = []
        self.link: Link | None = None
        self._serving: asyncio.Task[None] | None = None  # the link's reader
        self._base = dict.fromkeys(STATISTICS, 0.0)  # counters of workers that exited
        self._last = dict.fromkeys(STATISTICS, 0.0)  # the running worker's, last read

    def bind(self, host: str, port: int, *, implicit_tls: bool) -> int:
        """A listening socket for the worker; the bound port (OSError when it cannot)."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)  # fmt: skip
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets.append((sock, implicit_tls))
        bound: int = sock.getsockname()[1]
        return bound

    def arm(self) -> None:
        """Start the worker when the first client connects."""
        loop = asyncio.get_running_loop()
        for sock, _ in self._sockets:
            loop.add_reader(sock.fileno(), self._first_connection)

    def _first_connection(self) -> None:
        self._disarm()
        self._supervise_soon()

    def _disarm(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, _ in self._sockets:
            loop.remove_reader(sock.fileno())

    def _running(self, proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._poll())

    async def _spawn(self) -> asyncio.subprocess.Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), *(s.fileno() for s, _ in self._sockets)]
        start = Start(
            config=config_mod.to_dict(self.cfg),
            link_fd=theirs.fileno(),
            listeners=[(s.fileno(), tls) for s, tls in self._sockets],
        )
        try:
            self.proc = proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "postline.smtp.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=fds,
            )  # fmt: skip
        finally:
            theirs.close()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(msgspec.json.encode(start))
        proc.stdin.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._loop = asyncio.get_running_loop()
        fast = self._fast if self._submit is not None else None
        self.link = link = Link(ours, reader, writer, self._handle, fast=fast)
        self._serving = asyncio.get_running_loop().create_task(link.serve())
        await self._ready(proc, START_TIMEOUT)
        return proc

    def _went_down(self) -> None:
        self.up = False
        if self.link is not None:
            self.link.close()
            self.link = None
        for name, value in self._last.items():
            if name != GAUGE:
                self._base[name] += value
        self._last = dict.fromkeys(STATISTICS, 0.0)

    def _fast(self, frame: Frame) -> bool:
        """An accept straight to the spool's writer, answered from the writer thread."""
        if frame.name != "accept" or frame.kind != REQUEST:
            return False
        link, submit, rid = self.link, self._submit, frame.id
        assert link is not None and submit is not None
        batch = _decode_batch(frame.body)

        def committed(exc: BaseException | None) -> None:  # the writer thread
            if exc is None:
                link.reply_from_thread(rid)
                self._bookkeeping(batch)
            else:
                link.reply_from_thread(rid, failure=_failure(exc))

        try:
            submit(batch, committed)
        except BaseException as exc:  # admission refused (disk full), or a bug
            if not isinstance(exc, Exception):
                raise
            link.reply_from_thread(rid, failure=_failure(exc))
        return True

    def _bookkeeping(self, batch: AcceptBatch) -> None:
        """Queue the node's after-commit work; one loop wake-up per commit, not per batch."""
        with self._done_lock:
            first = not self._done
            self._done.append(batch)
        if first and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the node is gone
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        if self._accepted is not None:
            for batch in done:
                self._accepted(batch)

    async def _handle(self, name: str, body: msgspec.Raw) -> object:
        if name == "accept":
            batch = _decode_batch(body)
            try:
                await self._accept(batch)
            except SpoolUnavailable as exc:
                raise Failure("unavailable", exc.reason) from None
            except UnknownGroups as exc:
                raise Failure("unknown_groups", list(exc.group_ids)) from None
            return None
        if name == "auth":
            return self._keys.lookup(_decode_str(body))
        raise Failure("unknown_method", name)

    async def refresh(self) -> None:
        """Read the worker's counters (for /metrics); the last ones stay if it does not
        answer."""
        link = self.link
        if link is None or not self.up:
            return
        with contextlib.suppress(LinkClosed, RemoteError, TimeoutError, msgspec.DecodeError):
            raw = await asyncio.wait_for(link.call("stats"), STATS_TIMEOUT)
            self._last = _decode_stats(raw)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY)
            await self.refresh()

    def statistics(self) -> dict[str, float]:
        out = {k: self._base.get(k, 0.0) + v for k, v in self._last.items()}
        out["smtp_worker_up"] = 1.0 if self.up else 0.0
        out["smtp_worker_restarts"] = float(self.restarts)
        return out

    async def stop(self) -> None:
        """SIGTERM: the worker stops listening and answers 421; the link serves its last
        accepts meanwhile. Then the listening sockets close."""
        self._stopping = True
        with contextlib.suppress(RuntimeError):
            self._disarm()
        await self._stop_process(STOP_TIMEOUT)
        if self.link is not None:
            self.link.close()
        for sock, _ in self._sockets:
            sock.close()
        self._sockets.clear()
        self.up = False
