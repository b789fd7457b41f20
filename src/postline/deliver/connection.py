"""The asyncio adapter around :class:`~postline.deliver.smtp_protocol.ClientProtocol`.

It owns what the state machine must not: the socket, the TLS handshake and the clock.
It is an ``asyncio.Protocol`` rather than streams: replies are handled in
``data_received`` and the next command (the next RCPT in lock-step, the body after 354)
is written from there, so a whole transaction wakes the caller's task once. Works on the
default loop and on uvloop.

Time limits (RFC 5321 §4.5.3.2 gives the classic values; ours come from the config):

- ``connect_timeout``: TCP connect.
- ``command_timeout``: each reply, counted from the command's write or from the previous
  reply (a pipelined group of MAIL, RCPTs and DATA gets it per reply); also the greeting
  and the TLS handshake.
- ``data_timeout``: the message content and its final reply, counted from the 354.

A body up to ``STREAM_ABOVE`` (1 MiB) is handed to the transport in one ``write``, which
buffers what the socket does not take: the hot path, a few KB. A larger one is written a
chunk at a time under flow control: the next chunk is made and written only while the
transport is below its high-water mark (``pause_writing``/``resume_writing``), so the
transport never buffers a second copy of a 30 MB message. ``data_timeout`` bounds how
long a slow receiver can hold either.

Any :class:`SessionError` or :class:`SiteError` aborts the connection; a
:class:`MessageError` is raised before anything is written and leaves it usable.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import cast

from postline.deliver.errors import (
    ConnectFailed,
    ConnectionLost,
    SmtpClientError,
    Stage,
    Timeout,
    TlsFailed,
)
from postline.deliver.replies import Reply
from postline.deliver.smtp_events import (
    Established,
    Event,
    ResetDone,
    StartTls,
    Transaction,
    TransactionDone,
)
from postline.deliver.smtp_protocol import ClientProtocol, TlsMode

__all__ = ["SmtpConnection", "Transaction", "client_ssl_context", "open_connection"]

_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def client_ssl_context(verify: bool) -> ssl.SSLContext:
    """A shared client context: verifying (system CAs, host name) or accepting any cert.

    Built once per process: loading the CA store costs milliseconds per context.
    """
    ctx = _CONTEXTS.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _CONTEXTS[verify] = ctx
    return ctx


async def open_connection(
    host: str,
    port: int,
    *,
    helo: str,
    connect_timeout: float,
    command_timeout: float,
    data_timeout: float,
    tls: TlsMode = "opportunistic",
    verify_tls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_hostname: str | None = None,
    local_host: str | None = None,
) -> SmtpConnection:
    """Connect, read the greeting, say EHLO (or HELO), do STARTTLS per ``tls``.

    ``tls_hostname`` is the name to verify and send as SNI (the MX name when ``host`` is
    its address); ``local_host`` binds the source address (an IP of an IP pool).
    """
    loop = asyncio.get_running_loop()
    link = _Link(ClientProtocol(helo, tls=tls), loop, command_timeout, data_timeout)
    where = f"{host}:{port}"
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: link, host, port, local_addr=(local_host, 0) if local_host else None
            ),
            connect_timeout,
        )
    except TimeoutError:
        raise Timeout(f"connect to {where} timed out", stage=Stage.CONNECT) from None
    except OSError as exc:
        msg = f"connect to {where}: {exc.strerror or exc}"
        raise ConnectFailed(msg, stage=Stage.CONNECT) from exc
    conn = SmtpConnection(link)
    try:
        while True:
            event = await link.next_event()
            if isinstance(event, Established):
                return conn
            if isinstance(event, StartTls):
                ctx = ssl_context or client_ssl_context(verify_tls)
                await link.start_tls(ctx, tls_hostname or host, command_timeout)
    except BaseException:
        link.abort()
        raise


class SmtpConnection:
    """An established SMTP session: one transaction at a time, reusable until closed."""

    def __init__(self, link: _Link):
        self._link = link

    @property
    def extensions(self) -> Mapping[str, str]:
        """EHLO keywords (upper case) and their parameters; empty after HELO."""
        return self._link.proto.extensions

    @property
    def tls(self) -> bool:
        return self._link.proto.tls_active

    @property
    def is_open(self) -> bool:
        """False once the server or we closed it, or after a session error."""
        return self._link.proto.is_open and not self._link.closed

    @property
    def local_ip(self) -> str:
        return self._link.address("sockname")

    @property
    def remote_ip(self) -> str:
        return self._link.address("peername")

    async def send(
        self, mail_from: str, rcpts: list[str], data: bytes, *, smtputf8: bool = False
    ) -> Transaction:
        """One transaction for all ``rcpts``; the replies say who got the message.

        Raises a :class:`MessageError` before writing anything (SIZE, SMTPUTF8, long
        line), or a session error (timeout, lost connection, 421) after which the
        connection is closed.
        """
        link = self._link
        link.proto.start_transaction(mail_from, rcpts, data, smtputf8=smtputf8)
        link.flush()
        event = await link.next_event()
        assert isinstance(event, TransactionDone), event
        return event.transaction

    async def reset(self) -> Reply:
        """RSET (RFC 5321 §4.1.1.5); the pool can use it to check an idle connection."""
        self._link.proto.reset()
        self._link.flush()
        event = await self._link.next_event()
        assert isinstance(event, ResetDone), event
        return event.reply

    async def quit(self) -> None:
        """QUIT politely and close; never raises for a session that already went bad."""
        link = self._link
        try:
            if link.proto.is_open and not link.closed:
                link.proto.quit()
                link.flush()
                await link.next_event()
        except (SmtpClientError, RuntimeError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close now, without QUIT."""
        self._link.close()


class _Link(asyncio.Protocol):
    """Carries bytes between the transport and the state machine; wakes one waiter."""

    def __init__(
        self,
        proto: ClientProtocol,
        loop: asyncio.AbstractEventLoop,
        command_timeout: float,
        data_timeout: float,
    ):
        self.proto = proto
        self.closed = False
        self._loop = loop
        self._command_timeout = command_timeout
        self._data_timeout = data_timeout
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Event] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._progress_at = 0.0  # when the last reply arrived (or the wait began)
        self._progress_count = 0  # proto.replies_received at that moment
        self._armed_count = 0
        self._error: SmtpClientError | None = None  # raised while nobody was waiting
        self._paused = False  # the transport is over its high-water mark

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.proto.receive_data(data)
        except SmtpClientError as exc:
            self._fail(exc)
            return
        self.flush()
        if self._waiter is not None:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            self.proto.receive_eof()
        except SmtpClientError as err:
            self._fail(err)
            return
        if self._waiter is not None:
            self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.proto.body_pending:
            self._pump()

    # -- used by SmtpConnection ------------------------------------------------------

    def flush(self) -> None:
        out = self.proto.data_to_send()
        if out and self._transport is not None and not self.closed:
            self._transport.write(out)
        if self.proto.body_pending:
            self._pump()

    def address(self, which: str) -> str:
        info = self._transport.get_extra_info(which) if self._transport else None
        return str(info[0]) if info else ""

    async def next_event(self) -> Event:
        event = self.proto.next_event()
        if event is not None:
            return event
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.closed:
            stage = self.proto.stage or Stage.MAIL
            raise ConnectionLost("connection is closed", stage=stage)
        waiter: asyncio.Future[Event] = self._loop.create_future()
        self._waiter = waiter
        self._progress_at = self._loop.time()
        self._progress_count = self.proto.replies_received
        self._arm()
        try:
            return await waiter
        except asyncio.CancelledError:
            self.abort()  # the dialogue is mid-way: the session cannot be reused
            raise
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def start_tls(self, ctx: ssl.SSLContext, hostname: str, timeout: float) -> None:
        transport = self._transport
        assert transport is not None
        try:
            new = await asyncio.wait_for(
                self._loop.start_tls(transport, self, ctx, server_hostname=hostname), timeout
            )
        except TimeoutError:
            raise Timeout("TLS handshake timed out", stage=Stage.TLS) from None
        except (ssl.SSLError, OSError) as exc:
            raise TlsFailed(f"TLS handshake failed: {exc}", stage=Stage.TLS) from exc
        if new is None or self.closed:
            raise ConnectionLost("connection closed during the TLS handshake", stage=Stage.TLS)
        self._transport = new
        self.proto.tls_started()
        self.flush()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self.closed = True
            self._transport.abort()

    # -- internals -------------------------------------------------------------------

    def _pump(self) -> None:
        """Write a streamed body's pieces until the transport pauses us or it is all out."""
        transport = self._transport
        while not self._paused and self.proto.body_pending:
            if transport is None or self.closed or transport.is_closing():
                return  # connection_lost (or a timeout) fails the transaction
            piece = self.proto.next_body_piece()
            if piece:
                transport.write(piece)

    def _wake(self) -> None:
        waiter = self._waiter
        assert waiter is not None
        event = self.proto.next_event()
        if event is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(event)
        elif self.proto.replies_received != self._progress_count:
            self._progress_count = self.proto.replies_received
            self._progress_at = self._loop.time()

    def _fail(self, exc: SmtpClientError) -> None:
        self.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self._error is None:
            self._error = exc

    def _arm(self) -> None:
        limit = self._data_timeout if self.proto.stage is Stage.BODY else self._command_timeout
        self._armed_count = self._progress_count
        self._timer = self._loop.call_at(self._progress_at + limit, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        if self._progress_count != self._armed_count:
            self._arm()  # a reply came since: the limit runs from it
            return
        stage = self.proto.stage or Stage.MAIL
        self._fail(Timeout(f"timed out waiting for the {stage.value} reply", stage=stage))
