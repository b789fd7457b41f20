"""The SMTP relay's asyncio adapter: sockets, TLS, timeouts and limits around the machine.

:class:`postline.smtp.protocol.ServerProtocol` decides everything SMTP; this module feeds it
bytes, writes its replies and acts on its events (the contract is in
:mod:`postline.smtp.events`): TLS handshakes, key checks, and the message itself, which goes
to :class:`postline.accept.relay.RelayIntake` chunk by chunk as it arrives.

Strategies, each against a failure seen in other MTAs:

- **Bounded everything.** Connections in all and per client address (421 at connect);
  a client that does not read its replies is not read either (pause_reading while the
  transport holds more than ``_WRITE_HIGH`` bytes); an idle timeout per read and a deadline
  for the whole DATA phase (421 4.4.2); messages per connection.
- **No work while waiting.** While the machine waits for a decision (TLS handshake, AUTH
  verdict, spool commit) reading is paused and the idle timer stopped: pipelined input
  waits in the kernel, not in memory, and our own slowness never times a client out.
- **Failed AUTH costs the client, not us.** Failures are counted per address
  (api/auth_failures.py): past ``auth_fail_limit`` a minute the 535 is held
  ``auth_fail_delay``; past ``auth_fail_ban`` the address is refused at connect for
  ``auth_ban_time``.
- **One message's fault stays in it.** An exception while taking a message is a 451 for
  that message; the session goes on and its spool file is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from postline.accept.relay import Incoming, Refused, RelayIntake
from postline.accept.relay_headers import protocol_name
from postline.api.auth_failures import FailedAuth
from postline.api.limits import ConnectionGuard
from postline.config import SmtpConfig
from postline.keys import ApiKey
from postline.smtp import replies as r
from postline.smtp.events import (
    AuthRequest,
    CloseConnection,
    DataChunk,
    Limits,
    MessageAborted,
    MessageComplete,
    MessageRefused,
    MessageStart,
    SessionPolicy,
    StartTls,
)
from postline.smtp.protocol import Phase, ServerProtocol

log = logging.getLogger("postline.smtp")

_WRITE_HIGH = 256 * 1024  # replies a client has not read: stop reading it above this
STATISTICS = (  # the names RelayServer.statistics() reports
    "smtp_connections",
    "smtp_connections_accepted",
    "smtp_connections_refused",
    "smtp_messages",
    "smtp_messages_refused",
    "smtp_timeouts",
    "smtp_tls_failures",
    "smtp_errors",
    "smtp_auth_failures",
)
S421_BANNED = "421 4.7.0 Too many failed authentications from your address, try again later"
S421_TOO_MANY_MESSAGES = "421 4.7.0 Too many messages in one connection; reconnect to send more"
SCOPE = "mail.send"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyLookup = Callable[[str], Awaitable[ApiKey | None]]  # an AUTH password → its key, if any


@dataclass
class RelayStatistics:
    connections: int = 0  # accepted connections since start
    refused_connections: int = 0  # over a connection cap, or banned
    messages: int = 0  # acknowledged with 250
    refused_messages: int = 0  # refused after DATA (X-SMTPAPI, storage, headers)
    timeouts: int = 0
    tls_failures: int = 0
    errors: int = 0  # unforeseen exceptions while taking a message (451)


class RelayServer:
    def __init__(
        self,
        cfg: SmtpConfig,
        *,
        intake: RelayIntake,
        lookup: KeyLookup,
        hostname: str,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.cfg = cfg
        self.intake = intake
        self.lookup = lookup
        self.hostname = hostname
        self.tls = tls
        self.trusted: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in cfg.trusted_networks
        ]
        self.failed = FailedAuth(
            cfg.auth_fail_limit,
            float(cfg.auth_fail_delay),
            ban_after=cfg.auth_fail_ban,
            ban_for=float(cfg.auth_ban_time),
        )
        self.guard = ConnectionGuard(cfg.max_connections, cfg.max_connections_per_ip)
        self.limits = Limits(
            max_message_size=cfg.max_message_size, max_recipients=cfg.max_recipients
        )
        self.stats = RelayStatistics()
        self._servers: list[asyncio.Server] = []
        self.sessions: set[Session] = set()

    async def listen(self, host: str, port: int, *, implicit_tls: bool = False) -> int:
        """Bind one listener; returns the port (0 picks a free one)."""
        loop = asyncio.get_running_loop()
        ctx = self.tls if implicit_tls else None
        if implicit_tls and ctx is None:
            raise ValueError("implicit TLS needs a certificate")
        server = await loop.create_server(
            lambda: Session(self, implicit_tls), host, port, ssl=ctx, backlog=1024
        )
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def serve_socket(self, sock: socket.socket, *, implicit_tls: bool = False) -> None:
        """Serve a listening socket bound elsewhere (the node binds, its relay worker serves:
        smtp/worker.py)."""
        ctx = self.tls if implicit_tls else None
        if implicit_tls and ctx is None:
            raise ValueError("implicit TLS needs a certificate")
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Session(self, implicit_tls), sock=sock, ssl=ctx)
        self._servers.append(server)

    async def stop(self) -> None:
        """Stop listening; sessions get 421 and close (a message not yet acknowledged is not
        acknowledged: the client sends it again)."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.shutdown()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()

    def statistics(self) -> dict[str, float]:
        s = self.stats
        values = (self.guard.open, s.connections, s.refused_connections, s.messages,
                  s.refused_messages, s.timeouts, s.tls_failures, s.errors,
                  self.failed.failures)  # fmt: skip
        return dict(zip(STATISTICS, map(float, values), strict=True))

    def policy_for(self, ip: str, tls_active: bool) -> SessionPolicy:
        addr = _ip(ip)
        trusted = addr is not None and any(addr in n for n in self.trusted)
        loopback = addr is not None and addr.is_loopback
        cfg = self.cfg
        plaintext = cfg.allow_plaintext_auth or (loopback and cfg.plaintext_auth_loopback)
        return SessionPolicy(
            hostname=self.hostname,
            tls_available=self.tls is not None,
            tls_active=tls_active,
            plaintext_auth=plaintext,
            trusted=trusted,
        )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


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
