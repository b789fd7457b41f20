"""The SMTP relay's asyncio adapter: sockets, TLS, timeouts and limits around the machine.

:class:`postline.smtp.protocol.ServerProtocol` decides everything SMTP; the adapter feeds it
bytes, writes its replies and acts on its events (the contract is in
:mod:`postline.smtp.events`): TLS handshakes, key checks, and the message itself, which goes
to :class:`postline.accept.relay.RelayIntake` chunk by chunk as it arrives. This module
holds what all connections share (listeners, connection caps, failed AUTH per address,
trusted networks, counters); one connection is a :class:`postline.smtp.session.Session`.

Strategies, each against a failure seen in other MTAs:

- **Bounded everything.** Connections in all and per client address (421 at connect);
  a client that does not read its replies is not read either (pause_reading while the
  transport is above asyncio's write high-water mark, 64 KiB: ``pause_writing``,
  smtp/session.py); an idle timeout per
  read and a deadline for the whole DATA phase (421 4.4.2); messages per connection.
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
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from postline.accept.relay import RelayIntake
from postline.api.auth_failures import FailedAuth
from postline.api.limits import ConnectionGuard
from postline.config import SmtpConfig
from postline.keys import ApiKey
from postline.smtp.events import Limits, SessionPolicy
from postline.smtp.session import Session

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
