"""A scriptable SMTP destination on loopback, steered by the recipient's local part.

Like KumoMTA's test sink: the reply is chosen by the prefix of the local part, so one
server plays every scenario and a test reads as its addresses::

    250-alice@x.test, bob@x.test    accepted
    450-, 451-, 452-, 550-, 552-, 553-, 554-...@   that reply at RCPT (realistic text and
                                    enhanced code, e.g. "550 5.1.1 ... User unknown")
    421-...@                        421 at RCPT, then the connection is closed
    stall-...@                      no reply to that RCPT, ever (the client must time out)
    drop-...@                       RCPT accepted; the connection drops once the body flows
    data550-...@, data450-...@      accepted at RCPT, the message refused at end of data

The same prefixes on the *sender* refuse MAIL FROM. Server options offer or withhold
PIPELINING, STARTTLS (a self-signed certificate made at first use), SIZE, 8BITMIME,
SMTPUTF8 and ESMTP itself; ``max_connections`` answers 421 "too many connections" beyond
N concurrent sessions; the greeting can be delayed, replaced or withheld.

What it saw is kept for assertions: ``transactions`` (accepted messages, un-dot-stuffed),
``replies`` (count of replies sent, by code), ``commands`` (count by verb),
``connections``, ``rejected_connections`` and ``max_concurrent``. Commands are processed
from a buffer, so pipelining clients work.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import cast

from postline.smtp.tls import self_signed
from postline.testing.listeners import close_listener

# Reply templates, named after their code (STYLE habit 8); {addr}, {host}, {ip} filled in.
S220_GREETING = "220 {host} ESMTP Postline fake destination"
S220_READY_TLS = "220 2.0.0 Ready to start TLS"
S221_BYE = "221 2.0.0 Bye"
S250_OK = "250 2.0.0 Ok"
S250_SENDER_OK = "250 2.1.0 Ok"
S250_RCPT_OK = "250 2.1.5 Ok"
S250_QUEUED = "250 2.0.0 Ok: queued as {qid}"
S354_END_DATA = "354 End data with <CR><LF>.<CR><LF>"
S421_CLOSING = "421 4.3.2 {host} Service not available, closing transmission channel"
S421_TOO_MANY = "421 4.7.0 {host} Error: too many connections from {ip}"
S450_GREYLISTED = "450 4.2.0 <{addr}>: Recipient address rejected: Greylisted, try again later"
S450_DATA_DEFERRED = "450 4.7.1 Message temporarily deferred, try again later"
S451_LOCAL_ERROR = "451 4.3.0 <{addr}>: Temporary lookup failure"
S452_MAILBOX_FULL = "452 4.2.2 <{addr}>: Mailbox full, try again later"
S500_LINE_TOO_LONG = "500 5.5.0 Error: line too long"
S501_SYNTAX = "501 5.5.4 Syntax error in parameters"
S502_UNKNOWN = "502 5.5.2 Error: command not recognized"
S503_NEED_MAIL = "503 5.5.1 Error: need MAIL command"
S503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
S503_TLS_ACTIVE = "503 5.5.1 Error: TLS already active"
S550_USER_UNKNOWN = (
    "550 5.1.1 <{addr}>: Recipient address rejected: User unknown in local recipient table"
)
S550_CONTENT_REJECTED = "550 5.7.1 Message content rejected"
S552_QUOTA = "552 5.2.2 <{addr}>: Mailbox full, quota exceeded"
S552_TOO_BIG = "552 5.3.4 Error: message file too big"
S553_BAD_ADDRESS = "553 5.1.3 <{addr}>: Bad address syntax"
S554_RELAY_DENIED = "554 5.7.1 <{addr}>: Relay access denied"
S554_NO_RECIPIENTS = "554 5.5.1 Error: no valid recipients"
S555_UNSUPPORTED = "555 5.5.4 Unsupported option: {param}"

STEERED = {
    "421": S421_CLOSING,
    "450": S450_GREYLISTED,
    "451": S451_LOCAL_ERROR,
    "452": S452_MAILBOX_FULL,
    "550": S550_USER_UNKNOWN,
    "552": S552_QUOTA,
    "553": S553_BAD_ADDRESS,
    "554": S554_RELAY_DENIED,
}
DATA_STEERED = {"data550": S550_CONTENT_REJECTED, "data450": S450_DATA_DEFERRED}

_MAIL = re.compile(r"(?i)^FROM:\s*<([^>]*)>\s*(.*)$")
_RCPT = re.compile(r"(?i)^TO:\s*<([^>]*)>")
MAX_COMMAND = 4096


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message as the destination got it."""

    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes  # un-dot-stuffed, CRLF line ends, without the terminator
    tls: bool
    params: tuple[str, ...]  # MAIL FROM parameters, e.g. ("SIZE=2048", "BODY=8BITMIME")


def steer(address: str) -> str:
    """The steering prefix of an address: "550" for ``550-bob@x.test``, else ""."""
    local = address.rpartition("@")[0] or address
    prefix, dash, _ = local.partition("-")
    return prefix.lower() if dash else ""


class FakeSmtpServer:
    """An asyncio SMTP server on ``host``, port 0; ``async with`` starts and stops it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        hostname: str = "fake.test",
        esmtp: bool = True,
        pipelining: bool = True,
        starttls: bool = False,
        size: int | None = None,
        eightbitmime: bool = True,
        smtputf8: bool = False,
        max_connections: int = 0,
        greeting: str | None = None,
        greeting_delay: float = 0.0,
        greeting_stall: bool = False,
        port: int = 0,
        on_receive: Callable[[Received], None] | None = None,
        keep: bool = True,
    ):
        self.host = host
        self.hostname = hostname
        self.esmtp = esmtp
        self.pipelining = pipelining
        self.starttls = starttls
        self.size = size  # None: SIZE not offered; 0: offered without a limit
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.max_connections = max_connections  # 0: no limit
        self.greeting = greeting  # replaces the 220; a 4xx/5xx closes after sending it
        self.greeting_delay = greeting_delay
        self.greeting_stall = greeting_stall
        self.port = port  # 0: a free port, known after start()
        self.on_receive = on_receive  # called with each accepted message
        self.keep = keep  # False: do not keep messages in ``transactions`` (a long-running sink)
        self.transactions: list[Received] = []
        self.replies: Counter[int] = Counter()
        self.commands: Counter[str] = Counter()
        self.connections = 0
        self.rejected_connections = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.served = 0  # sessions open and not refused by max_connections
        self.tls_context: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue_id = 0

    async def start(self) -> None:
        self._stopping = False
        if self.starttls:
            self.tls_context = _server_tls()[0]
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        await close_listener(self._server)  # no socket left open (listeners.py)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        self._stopping = True  # a connection made from now on is aborted at once
        for task in list(self._tasks):
            task.cancel()
        while self._sessions and loop.time() < deadline:
            for session in list(self._sessions):
                session.abort()
            await asyncio.sleep(0.005)  # an abort closes the socket in a later callback
        await self._server.wait_closed()
        self._server = None
        await asyncio.sleep(0)  # the last connection_lost callbacks

    async def __aenter__(self) -> FakeSmtpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @staticmethod
    def client_ssl_context() -> ssl.SSLContext:
        """A verifying client context that trusts the fake's certificate (``fake.test``)."""
        return ssl.create_default_context(cadata=_server_tls()[1])

    def next_queue_id(self) -> str:
        self._queue_id += 1
        return f"{self._queue_id:010X}"

    def ehlo_lines(self, tls: bool) -> list[str]:
        lines = [self.hostname]
        if self.pipelining:
            lines.append("PIPELINING")
        if self.size is not None:
            lines.append(f"SIZE {self.size}")
        if self.starttls and not tls:
            lines.append("STARTTLS")
        if self.eightbitmime:
            lines.append("8BITMIME")
        if self.smtputf8:
            lines.append("SMTPUTF8")
        lines.append("ENHANCEDSTATUSCODES")
        return lines


class _Session(asyncio.Protocol):
    """One connection: a small line-driven state machine, replies batched per read."""

    def __init__(self, server: FakeSmtpServer):
        self.srv = server
        self.transport: asyncio.Transport | None = None
        self.state = "greet"  # greet, cmd, data, stall, tls, closed
        self.refused = False
        self.tls = False
        self.buf = b""
        self.out: list[bytes] = []
        self.data = bytearray()
        self.drop = False
        self._reset()

    def _reset(self) -> None:
        self.mail: str | None = None
        self.params: tuple[str, ...] = ()
        self.rcpts: list[str] = []

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self.srv
        self.transport = cast(asyncio.Transport, transport)
        srv._sessions.add(self)
        srv.connections += 1
        srv.concurrent += 1
        srv.max_concurrent = max(srv.max_concurrent, srv.concurrent)
        if srv._stopping:  # accepted as the server stopped (stop)
            self.refused = True
            self.transport.abort()
            return
        if srv.max_connections and srv.served >= srv.max_connections:
            self.refused = True
            srv.rejected_connections += 1
            ip = self.transport.get_extra_info("peername")[0]
            self._reply(S421_TOO_MANY.format(host=srv.hostname, ip=ip))
            self._close()
            return
        srv.served += 1
        if srv.greeting_stall:
            self.state = "stall"
        elif srv.greeting_delay:
            asyncio.get_running_loop().call_later(srv.greeting_delay, self._greet)
        else:
            self._greet()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
        srv._sessions.discard(self)
        srv.concurrent -= 1
        if not self.refused:
            srv.served -= 1
        self.state = "closed"

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _greet(self) -> None:
        if self.state != "greet":
            return
        greeting = self.srv.greeting or S220_GREETING.format(host=self.srv.hostname)
        self._reply(greeting)
        if not greeting.startswith("2"):
            self._close()
            return
        self.state = "cmd"
        self._process()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.state == "data":
            self._absorb(data)
        elif self.state in ("cmd", "greet"):
            self.buf += data
        self._process()
        self._flush()

    # -- input -----------------------------------------------------------------------

    def _process(self) -> None:
        while self.state == "cmd":
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > MAX_COMMAND:
                    self._reply(S500_LINE_TOO_LONG)
                    self._close()
                return
            line, self.buf = self.buf[:end].rstrip(b"\r"), self.buf[end + 1 :]
            self._command(line.decode("utf-8", "replace"))
            if self.state == "data" and self.buf:
                rest, self.buf = self.buf, b""
                self._absorb(rest)

    def _absorb(self, chunk: bytes) -> None:
        if self.drop:
            self.abort()
            return
        data = self.data
        start = max(0, len(data) - 4)
        data += chunk
        end = data.find(b"\r\n.\r\n", start)
        if end >= 0:
            body = bytes(data[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
            self.buf = bytes(data[end + 5 :]) + self.buf
            self.data = bytearray()
            self.state = "cmd"
            self._end_of_data(body)

    def _command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        self.srv.commands[verb] += 1
        handler = getattr(self, "smtp_" + verb, None)
        if handler is None:
            self._reply(S502_UNKNOWN)
        else:
            handler(arg.strip())

    # -- commands (aiosmtpd style: one method per verb) ------------------------------

    def smtp_EHLO(self, arg: str) -> None:
        if not self.srv.esmtp:
            self._reply(S502_UNKNOWN)
            return
        self._reset()
        lines = self.srv.ehlo_lines(self.tls)
        self.srv.replies[250] += 1
        last = len(lines) - 1
        self.out.append(
            "".join(
                f"250{' ' if i == last else '-'}{ln}\r\n" for i, ln in enumerate(lines)
            ).encode()
        )

    def smtp_HELO(self, arg: str) -> None:
        self._reset()
        self._reply(f"250 {self.srv.hostname}")

    def smtp_STARTTLS(self, arg: str) -> None:
        if not (self.srv.starttls and self.srv.esmtp):
            self._reply(S502_UNKNOWN)
        elif self.tls:
            self._reply(S503_TLS_ACTIVE)
        else:
            self._reply(S220_READY_TLS)
            self._flush()
            self.state = "tls"
            self.buf = b""  # RFC 3207 §4.2: discard anything sent before the handshake
            task = asyncio.get_running_loop().create_task(self._upgrade())
            self.srv._tasks.add(task)
            task.add_done_callback(self.srv._tasks.discard)

    async def _upgrade(self) -> None:
        assert self.transport is not None and self.srv.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, self.srv.tls_context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError):
            self.abort()
            return
        if new is None:
            return
        self.transport, self.tls, self.state = new, True, "cmd"
        self._reset()

    def smtp_MAIL(self, arg: str) -> None:
        m = _MAIL.match(arg)
        if not m:
            self._reply(S501_SYNTAX)
            return
        if self.mail is not None:
            self._reply(S503_NESTED_MAIL)
            return
        sender, params = m.group(1), tuple(m.group(2).split())
        refusal = self._check_params(params) or STEERED.get(steer(sender))
        if refusal:
            self._reply(refusal.format(addr=sender, host=self.srv.hostname, param=""))
            if refusal is S421_CLOSING:
                self._close()
            return
        self.mail, self.params = sender, params
        self._reply(S250_SENDER_OK)

    def _check_params(self, params: tuple[str, ...]) -> str | None:
        srv = self.srv
        for param in params:
            key, _, value = param.upper().partition("=")
            if key == "SIZE" and srv.size is not None and value.isdigit():
                if srv.size and int(value) > srv.size:
                    return S552_TOO_BIG
                continue
            body = key == "BODY" and (value == "7BIT" or (value == "8BITMIME" and srv.eightbitmime))
            utf8 = key == "SMTPUTF8" and srv.smtputf8 and not value
            if not (body or utf8):
                return S555_UNSUPPORTED.replace("{param}", param)
        return None

    def smtp_RCPT(self, arg: str) -> None:
        m = _RCPT.match(arg)
        if not m:
            self._reply(S501_SYNTAX)
            return
        if self.mail is None:
            self._reply(S503_NEED_MAIL)
            return
        rcpt = m.group(1)
        prefix = steer(rcpt)
        if prefix == "stall":
            self.state = "stall"
        elif prefix in STEERED:
            self._reply(STEERED[prefix].format(addr=rcpt, host=self.srv.hostname))
            if prefix == "421":
                self._close()
        else:
            self.rcpts.append(rcpt)
            self._reply(S250_RCPT_OK)

    def smtp_DATA(self, arg: str) -> None:
        if self.mail is None:
            self._reply(S503_NEED_MAIL)
        elif not self.rcpts:
            self._reply(S554_NO_RECIPIENTS)
        else:
            self.state = "data"
            self.data = bytearray(b"\r\n")  # so a first line "." is found like any other
            self.drop = any(steer(r) == "drop" for r in self.rcpts)
            self._reply(S354_END_DATA)

    def _end_of_data(self, body: bytes) -> None:
        srv = self.srv
        prefixes = {steer(r) for r in self.rcpts}
        refusal = next((DATA_STEERED[p] for p in DATA_STEERED if p in prefixes), None)
        if refusal is None and srv.size and len(body) > srv.size:
            refusal = S552_TOO_BIG
        if refusal is not None:
            self._reply(refusal)
        else:
            assert self.mail is not None
            received = Received(self.mail, tuple(self.rcpts), body, self.tls, self.params)
            if srv.keep:
                srv.transactions.append(received)
            if srv.on_receive is not None:
                srv.on_receive(received)
            self._reply(S250_QUEUED.format(qid=srv.next_queue_id()))
        self._reset()

    def smtp_RSET(self, arg: str) -> None:
        self._reset()
        self._reply(S250_OK)

    def smtp_NOOP(self, arg: str) -> None:
        self._reply(S250_OK)

    def smtp_QUIT(self, arg: str) -> None:
        self._reply(S221_BYE)
        self._close()

    # -- output ----------------------------------------------------------------------

    def _reply(self, text: str) -> None:
        self.srv.replies[int(text[:3])] += 1
        self.out.append(text.encode() + b"\r\n")

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _close(self) -> None:
        self._flush()
        self.state = "closed"
        if self.transport is not None:
            self.transport.close()


# -- TLS: one self-signed certificate per process, made with `cryptography` ------------

_TLS: tuple[ssl.SSLContext, str] | None = None


def _server_tls() -> tuple[ssl.SSLContext, str]:
    """The server context and the certificate's PEM (for clients that verify)."""
    global _TLS
    if _TLS is None:
        cert_pem, key_pem = self_signed("fake.test")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_text(cert_pem)
            key.write_text(key_pem)
            ctx.load_cert_chain(cert, key)
        _TLS = (ctx, cert_pem)
    return _TLS


@contextlib.contextmanager
def running_in_thread(server: FakeSmtpServer) -> Iterator[FakeSmtpServer]:
    """Run ``server`` on its own event loop in a thread, for synchronous or other-loop callers.

    Read its counters only when the traffic is over: they are updated from that thread.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-smtp", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
