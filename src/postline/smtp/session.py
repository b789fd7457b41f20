"""One relay client connection: the asyncio protocol between a socket and the SMTP machine.

Input, and every decision taken, ends in :meth:`Session._pump`: send what
:class:`postline.smtp.protocol.ServerProtocol` queued, act on each of its events, then set
reading and the idle timer (``_flow``). The decisions the machine waits for — AUTH verdict,
TLS handshake, spool commit — run as one task each (``_decide``) while reading is paused;
they give the machine its answer and pump again. The message goes to
:class:`postline.accept.relay.RelayIntake` chunk by chunk as it arrives; however the
connection ends, a message not acknowledged is discarded with its spool file.

What the sessions share — listeners, connection caps, failed AUTH per address, counters —
is :class:`postline.smtp.server.RelayServer`'s; its module names the strategies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from postline.accept.relay import Incoming, Refused
from postline.accept.relay_headers import protocol_name
from postline.keys import ApiKey
from postline.smtp import replies as r
from postline.smtp.events import (
    AuthRequest,
    CloseConnection,
    DataChunk,
    MessageAborted,
    MessageComplete,
    MessageRefused,
    MessageStart,
    Phase,
    StartTls,
)
from postline.smtp.protocol import ServerProtocol

if TYPE_CHECKING:  # server.py makes the sessions
    from postline.smtp.server import RelayServer

log = logging.getLogger("postline.smtp")

S421_BANNED = "421 4.7.0 Too many failed authentications from your address, try again later"
S421_TOO_MANY_MESSAGES = "421 4.7.0 Too many messages in one connection; reconnect to send more"
SCOPE = "mail.send"


class Session(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: RelayServer, implicit_tls: bool) -> None:
        self.srv = server
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.proto: ServerProtocol | None = None
        self.ip = ""
        self.key: ApiKey | None = None
        self.incoming: Incoming | None = None
        self.admitted = False
        self.messages = 0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # loop time: the idle (or DATA) timeout ends the session then
        self._timer_at = 0.0  # when the timer handle fires
        self._data_deadline = 0.0
        self._paused_by_writes = False
        self._paused = False  # reading paused by _flow
        self._task: asyncio.Task[None] | None = None  # the decision being made (auth, commit)

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if isinstance(peer, Sequence) and peer else ""
        srv = self.srv
        if srv.failed.banned(self.ip):
            return self._refuse_connection(S421_BANNED)
        if not srv.guard.admit(self.ip):
            return self._refuse_connection(r.S421_TOO_MANY_CONNECTIONS)
        self.admitted = True
        srv.stats.connections += 1
        srv.sessions.add(self)
        self.proto = ServerProtocol(srv.policy_for(self.ip, self.implicit_tls), srv.limits)
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.proto is None:
            return
        self.proto.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        if self.proto is not None:
            self.proto.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.proto is not None and not self.proto.closed:
            self.proto.receive_eof()
            self._pump()
        self._drop_message()
        if self.admitted:
            self.admitted = False
            self.srv.guard.release(self.ip)
            self.srv.sessions.discard(self)
        self.transport = None

    def pause_writing(self) -> None:
        self._paused_by_writes = True
        self._flow()

    def resume_writing(self) -> None:
        self._paused_by_writes = False
        self._flow()

    # -- the machine's side -------------------------------------------------------------

    def shutdown(self) -> None:
        if self.proto is not None and not self.proto.closed:
            self.proto.close(r.S421_SHUTTING_DOWN)
            self._pump()
        elif self.transport is not None:
            self.transport.abort()

    def _refuse_connection(self, reply: str) -> None:
        self.srv.stats.refused_connections += 1
        assert self.transport is not None
        self.transport.write(reply.encode() + b"\r\n")
        self.transport.close()

    def _pump(self) -> None:
        """Send what the machine queued, act on its events, then set reading and timers."""
        proto, transport = self.proto, self.transport
        if proto is None or transport is None:
            return
        while True:
            out = proto.bytes_to_send()
            if out and not transport.is_closing():
                transport.write(out)
            event = proto.next_event()
            if event is None:
                break
            self._on_event(event)
        self._flow()

    def _on_event(self, event: object) -> None:
        if isinstance(event, DataChunk):
            if self.incoming is not None:
                self.incoming.write(event.data)
        elif isinstance(event, MessageStart):
            self._start_message(event)
        elif isinstance(event, MessageComplete):
            self._decide(self._commit())
        elif isinstance(event, MessageRefused | MessageAborted):
            if isinstance(event, MessageRefused):
                self.srv.stats.refused_messages += 1
            self._drop_message()
        elif isinstance(event, AuthRequest):
            self._decide(self._authenticate(event))
        elif isinstance(event, StartTls):
            self._decide(self._start_tls())
        elif isinstance(event, CloseConnection):
            self._cancel_timer()
            assert self.transport is not None
            self.transport.close()  # after the queued reply has been written

    def _flow(self) -> None:
        """Read only when the machine can act on input and the client reads its replies."""
        proto, transport = self.proto, self.transport
        if proto is None or transport is None or transport.is_closing():
            return
        if proto.waiting or self._paused_by_writes:
            if not self._paused:  # the timer goes on: _timed_out spares our own waits
                transport.pause_reading()
                self._paused = True
        else:
            if self._paused:
                transport.resume_reading()
                self._paused = False
            self._arm_timer()

    def _decide(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a decision (auth check, TLS handshake, spool commit) as a task; the machine
        waits meanwhile and ``_flow`` has paused reading."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(coro)  # kept: a task only the loop knows may be collected

    # -- messages ------------------------------------------------------------------------

    def _start_message(self, event: MessageStart) -> None:
        assert self.proto is not None
        tenant = self.key.tenant if self.key is not None else "default"
        self._data_deadline = time.monotonic() + float(self.srv.cfg.data_timeout)
        try:
            self.incoming = self.srv.intake.begin(
                event.envelope,
                tenant=tenant,
                client_ip=self.ip,
                protocol=protocol_name(
                    esmtp=self.proto.esmtp, tls=self.proto.tls, auth=self.key is not None
                ),
            )
        except Exception:
            log.exception("cannot start taking a message")
            self.incoming = None

    async def _commit(self) -> None:
        proto, incoming = self.proto, self.incoming
        assert proto is not None
        self.incoming = None
        self._data_deadline = 0.0
        if incoming is None:  # begin() failed: already logged
            self.srv.stats.errors += 1
            proto.refuse_message(r.S451_LOCAL_ERROR)
            return self._pump()
        try:
            queue_id = await incoming.finish()
        except Refused as exc:
            self.srv.stats.refused_messages += 1
            proto.refuse_message(exc.reply)
        except Exception:
            log.exception("taking a message failed", extra={"remote": self.ip})
            self.srv.stats.errors += 1
            proto.refuse_message(r.S451_LOCAL_ERROR)
        else:
            self.srv.stats.messages += 1
            self.messages += 1
            proto.accept_message(queue_id)
            if self.messages >= self.srv.cfg.max_messages_per_connection:
                proto.close(S421_TOO_MANY_MESSAGES)
        finally:
            incoming.discard()
        self._pump()

    def _drop_message(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None

    # -- auth and TLS --------------------------------------------------------------------

    async def _authenticate(self, req: AuthRequest) -> None:
        proto = self.proto
        assert proto is not None
        key = await self.srv.lookup(req.password) if req.username == "apikey" else None
        ok = key is not None and not key.revoked and SCOPE in key.scopes
        if ok:
            self.key = key
        else:
            reason = "user is not apikey" if req.username != "apikey" else "unknown key"
            if key is not None:
                reason = f"key lacks the {SCOPE} scope"
            delay = self.srv.failed.failed(self.ip, reason)
            if delay > 0:
                await asyncio.sleep(delay)
            if self.srv.failed.banned(self.ip):
                proto.auth_result(False)
                proto.close(S421_BANNED)
                return self._pump()
        proto.auth_result(ok)
        self._pump()

    async def _start_tls(self) -> None:
        proto, transport, ctx = self.proto, self.transport, self.srv.tls
        assert proto is not None and transport is not None and ctx is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(transport, self, ctx, server_side=True,
                                       ssl_handshake_timeout=30.0)  # fmt: skip
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.srv.stats.tls_failures += 1
            log.info("TLS handshake failed", extra={"remote": self.ip, "error": str(exc)})
            proto.receive_eof()
            transport.abort()
            return
        if new is None:
            transport.abort()
            return
        self.transport = new
        self._paused = False  # the TLS transport reads
        proto.tls_started()
        self._pump()

    # -- timers --------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        """Push the deadline. One timer handle per session, re-armed only when it fires
        before the deadline (a handle per read cost 3% of the node's time under load)."""
        proto = self.proto
        if proto is None or proto.closed:
            return
        loop = asyncio.get_running_loop()
        limit = float(self.srv.cfg.command_timeout)
        if proto.phase is Phase.DATA and self._data_deadline:
            limit = min(limit, max(0.0, self._data_deadline - time.monotonic()))
        self._deadline = deadline = loop.time() + limit
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = loop.call_at(deadline, self._timed_out), deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        proto = self.proto
        if proto is None or proto.closed:
            return
        loop = asyncio.get_running_loop()
        if proto.waiting:  # our decision is awaited (auth, commit): not the client's delay
            self._deadline = loop.time() + float(self.srv.cfg.command_timeout)
        if loop.time() < self._deadline:  # input came since: wait for the pushed deadline
            self._timer, self._timer_at = (
                loop.call_at(self._deadline, self._timed_out),
                self._deadline,
            )
            return
        self.srv.stats.timeouts += 1
        proto.close(r.S421_TIMEOUT)
        self._pump()
