"""The SMTP client as a sans-I/O state machine (in the manner of h11): no sockets, no clock.

The adapter (:mod:`postline.deliver.connection`) feeds it the bytes it reads
(:meth:`ClientProtocol.receive_data`), writes what :meth:`ClientProtocol.data_to_send`
returns, and waits for events (:meth:`ClientProtocol.next_event`; they are defined in
:mod:`postline.deliver.smtp_events`). The machine itself decides every step of the dialogue:

- greeting → EHLO, falling back to HELO when EHLO gets a 5xx (RFC 5321 §3.2);
- STARTTLS when offered and the policy is not "off", then EHLO again (RFC 3207 §4.2);
  "required" without an offer raises :class:`TlsRequired`. The adapter performs the
  handshake when it sees :class:`StartTls`, then calls :meth:`ClientProtocol.tls_started`;
- one transaction per message, with every recipient: with PIPELINING (RFC 2920) MAIL,
  all RCPTs and DATA go in one write and the replies are matched in order; without it,
  lock-step. DATA only when a recipient was accepted; the body only after 354: in
  :meth:`~ClientProtocol.data_to_send` up to ``STREAM_ABOVE`` octets, beyond that piece
  by piece from :meth:`~ClientProtocol.next_body_piece`, so that the adapter writes the
  next piece only when its transport has drained (a 30 MB body is never copied whole);
- RSET only when a transaction was left open (recipients all refused, DATA refused),
  sent lazily in front of the next MAIL (in the same write when pipelining);
- MAIL parameters (:mod:`postline.deliver.smtp_envelope`) SIZE= (RFC 1870; refused locally
  when over the advertised limit), BODY=8BITMIME for 8-bit content (RFC 6152), SMTPUTF8
  (RFC 6531) only for a non-ASCII local part: an internationalized domain goes as its
  A-label (IDNA2008).

Replies are matched to commands through a queue of pending stages; ``stage`` (the reply
awaited) is what the adapter's timeouts and errors report. The message's wire form (line
ends, line length, dot-stuffing, chunks) is :mod:`postline.deliver.message_data`'s job.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from postline.deliver.errors import (
    ConnectionLost,
    ProtocolError,
    ServiceClosing,
    SessionRejected,
    SmtpClientError,
    Stage,
    TlsRequired,
)
from postline.deliver.message_data import (
    BODY_CHUNK,
    STREAM_ABOVE,
    measure_data,
    prepare,
    stuffed_chunks,
    terminator,
)
from postline.deliver.replies import Reply, ReplyParser, parse_ehlo
from postline.deliver.smtp_envelope import mail_params, need_smtputf8
from postline.deliver.smtp_events import (
    Closed,
    Established,
    Event,
    ResetDone,
    StartTls,
    Transaction,
    TransactionDone,
)
from postline.model.domain import a_label, envelope_address

TlsMode = Literal["opportunistic", "required", "off"]


class _State(enum.Enum):
    OPENING = "opening"  # greeting, EHLO/HELO, STARTTLS
    TLS_WAIT = "tls handshake"
    IDLE = "idle"
    TRANSACTION = "transaction"
    BUSY = "busy"  # RSET or QUIT outstanding
    CLOSED = "closed"


@dataclass(slots=True)
class _Tx:
    mail_from: str
    rcpts: list[str]
    mail_command: bytes
    commands: list[bytes]  # the RCPT commands, sent one by one without PIPELINING
    payload: bytes  # the wire form; a streamed body's is the caller's data as given
    streamed: bool = False
    mail: Reply | None = None
    replies: list[Reply] = field(default_factory=list)
    accepted: int = 0
    data: Reply | None = None


class ClientProtocol:
    """One SMTP client session. Not thread-safe; one transaction at a time."""

    def __init__(self, helo: str, *, tls: TlsMode = "opportunistic", tls_active: bool = False):
        self._helo = (a_label(helo) or helo).encode("ascii", "replace")
        self._tls_mode = tls
        self.tls_active = tls_active
        self.extensions: dict[str, str] = {}
        self.replies_received = 0  # progress counter for the adapter's timers
        self._parser = ReplyParser()
        self._pending: deque[Stage] = deque([Stage.GREETING])
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._state = _State.OPENING
        self._tx: _Tx | None = None
        self._body: Iterator[bytes | memoryview] | None = None  # a streamed body's chunks
        self._body_end = b""  # its terminator, sent after the last chunk
        self._needs_reset = False
        self._closed_reason: SmtpClientError | None = None

    # -- the adapter's side ------------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The stage whose reply is awaited, None when nothing is outstanding."""
        if self._state is _State.TLS_WAIT:
            return Stage.TLS
        return self._pending[0] if self._pending else None

    @property
    def is_open(self) -> bool:
        return self._state is not _State.CLOSED

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    def data_to_send(self) -> bytes:
        """Commands, and a body up to STREAM_ABOVE octets; a larger one is in pieces."""
        out, self._out = self._out, []
        return b"".join(out)

    @property
    def body_pending(self) -> bool:
        """A streamed body has pieces left: write them as the transport drains."""
        return self._body is not None

    def next_body_piece(self) -> bytes | memoryview:
        """The next piece of a streamed body (after :meth:`data_to_send`); b"" at its end.

        Each piece is made when asked for, so a caller that writes one only when the
        transport has drained holds at most about one chunk beyond the message itself.
        """
        if self._body is None:
            return b""
        piece = next(self._body, None)
        if piece is None:
            self._body, piece = None, self._body_end
        return piece

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive_data(self, data: bytes) -> None:
        try:
            if self._state is _State.TLS_WAIT:
                raise ProtocolError("data received before the TLS handshake")
            for reply in self._parser.feed(data):
                self._on_reply(reply)
        except SmtpClientError:
            self._state, self._body = _State.CLOSED, None
            raise

    def receive_eof(self) -> None:
        """The server closed the connection. Raises if a reply was still owed."""
        was, self._state, self._body = self._state, _State.CLOSED, None
        stage = self.stage
        if was is _State.TLS_WAIT or (stage is not None and stage is not Stage.QUIT):
            raise ConnectionLost(
                f"connection closed by the server while waiting for the {stage.value} reply"
                if stage
                else "connection closed during the TLS handshake",
                stage=stage or Stage.TLS,
            )
        if was is _State.BUSY:
            self._events.append(Closed(None))
        elif self._closed_reason is None:
            self._closed_reason = ConnectionLost(
                "connection closed by the server while idle", stage=Stage.MAIL
            )

    def tls_started(self) -> None:
        """The adapter finished the handshake: forget what we knew, say EHLO again."""
        if self._state is not _State.TLS_WAIT:
            raise RuntimeError("tls_started() without a StartTls event")
        self.tls_active = True
        self.extensions = {}
        self._state = _State.OPENING
        self._send(Stage.EHLO, b"EHLO " + self._helo + b"\r\n")

    # -- the caller's side -------------------------------------------------------------

    def start_transaction(
        self, mail_from: str, rcpts: list[str], data: bytes, *, smtputf8: bool = False
    ) -> None:
        """Queue a transaction for ``rcpts``. A :class:`MessageError` leaves the session as is."""
        self._check_idle()
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        streamed = len(data) > STREAM_ABOVE
        payload, size = (data, measure_data(data)) if streamed else prepare(data)
        mail_from, rcpts = envelope_address(mail_from), [envelope_address(r) for r in rcpts]
        utf8 = need_smtputf8(mail_from, rcpts, smtputf8, self.extensions)
        params = mail_params(size, payload, utf8, self.extensions)
        enc = "utf-8" if utf8 else "ascii"
        mail = b"MAIL FROM:<" + mail_from.encode(enc) + b">" + params + b"\r\n"
        commands = [b"RCPT TO:<" + r.encode(enc) + b">\r\n" for r in rcpts]
        self._tx = _Tx(mail_from, list(rcpts), mail, commands, payload, streamed)
        self._state = _State.TRANSACTION
        if self._needs_reset:
            self._send(Stage.RSET, b"RSET\r\n")
            if not self.pipelining:
                return  # MAIL follows RSET's reply
        self._send_mail()

    def reset(self) -> None:
        self._check_idle()
        self._state = _State.BUSY
        self._send(Stage.RSET, b"RSET\r\n")

    def quit(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.BUSY
        self._send(Stage.QUIT, b"QUIT\r\n")

    # -- internals ---------------------------------------------------------------------

    def _send(self, stage: Stage, command: bytes) -> None:
        self._pending.append(stage)
        self._out.append(command)

    def _check_idle(self) -> None:
        if self._state is _State.IDLE:
            return
        if self._state is _State.CLOSED:
            reason, self._closed_reason = self._closed_reason, None  # raised once, then generic
            raise reason or ConnectionLost("connection is closed", stage=Stage.MAIL)
        raise RuntimeError(f"session is busy ({self._state.value})")

    def _send_mail(self) -> None:
        tx = self._tx
        assert tx is not None
        self._send(Stage.MAIL, tx.mail_command)
        if self.pipelining:
            for command in tx.commands:
                self._send(Stage.RCPT, command)
            self._send(Stage.DATA, b"DATA\r\n")

    def _on_reply(self, reply: Reply) -> None:
        self.replies_received += 1
        if self._state is _State.TLS_WAIT:
            # Anything after STARTTLS's 220 would pass as if it came over TLS (CVE-2011-0411).
            raise ProtocolError(f"reply pipelined after the STARTTLS reply: {reply}")
        if not self._pending:
            if reply.code == 421:  # RFC 5321 §3.8: e.g. an idle timeout
                self._state = _State.CLOSED
                self._closed_reason = ServiceClosing(str(reply), stage=Stage.MAIL, reply=reply)
                return
            raise ProtocolError(f"unexpected reply {reply}")
        stage = self._pending.popleft()
        if reply.code == 421 and stage is not Stage.QUIT:
            raise ServiceClosing(str(reply), stage=stage, reply=reply)
        self._HANDLERS[stage](self, reply)

    def _on_greeting(self, reply: Reply) -> None:
        if reply.code // 100 != 2:
            raise SessionRejected(str(reply), stage=Stage.GREETING, reply=reply)
        self._send(Stage.EHLO, b"EHLO " + self._helo + b"\r\n")

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.code // 100 == 2:
            self.extensions = parse_ehlo(reply)
            self._after_hello(Stage.EHLO)
        elif reply.code // 100 == 5:
            self._send(Stage.HELO, b"HELO " + self._helo + b"\r\n")
        else:
            raise SessionRejected(str(reply), stage=Stage.EHLO, reply=reply)

    def _on_helo(self, reply: Reply) -> None:
        if reply.code // 100 != 2:
            raise SessionRejected(str(reply), stage=Stage.HELO, reply=reply)
        self.extensions = {}
        self._after_hello(Stage.HELO)

    def _after_hello(self, stage: Stage) -> None:
        if not self.tls_active and self._tls_mode != "off":
            if "STARTTLS" in self.extensions:
                self._send(Stage.STARTTLS, b"STARTTLS\r\n")
                return
            if self._tls_mode == "required":
                raise TlsRequired("TLS is required, but was not offered by the host", stage=stage)
        self._established()

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code == 220:
            if self._parser.partial or self._pending:
                raise ProtocolError("data pipelined after the STARTTLS reply")
            self._state = _State.TLS_WAIT
            self._events.append(StartTls())
        elif self._tls_mode == "required":
            raise TlsRequired(str(reply), stage=Stage.STARTTLS, reply=reply)
        else:
            self._established()

    def _established(self) -> None:
        self._state = _State.IDLE
        self._events.append(Established(self.extensions, self.tls_active))

    def _on_rset(self, reply: Reply) -> None:
        if reply.code // 100 != 2:
            raise ProtocolError(f"RSET refused: {reply}", reply=reply)
        self._needs_reset = False
        if self._tx is None:
            self._state = _State.IDLE
            self._events.append(ResetDone(reply))
        elif not self.pipelining:
            self._send_mail()

    def _on_mail(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.mail = reply
        if not self.pipelining:
            if reply.positive:
                self._send(Stage.RCPT, tx.commands[0])
            else:
                self._finish(reset=False)

    def _on_rcpt(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        tx.replies.append(reply)
        if reply.positive:
            tx.accepted += 1
        if self.pipelining:
            return
        if len(tx.replies) < len(tx.rcpts):
            self._send(Stage.RCPT, tx.commands[len(tx.replies)])
        elif tx.accepted:
            self._send(Stage.DATA, b"DATA\r\n")
        else:
            self._finish(reset=True)

    def _on_data(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None and tx.mail is not None
        if reply.code != 354:
            tx.data = reply
            self._finish(reset=tx.mail.positive)
        elif tx.accepted and tx.mail.positive and tx.streamed:
            self._pending.append(Stage.BODY)  # the adapter pulls it with next_body_piece()
            self._body = stuffed_chunks(tx.payload, BODY_CHUNK)
            self._body_end = terminator(tx.payload)
        elif tx.accepted and tx.mail.positive:
            self._send(Stage.BODY, tx.payload)
        else:
            # RFC 2920 §3.1: DATA accepted though no recipient was; end an empty message.
            tx.payload = b""
            self._send(Stage.BODY, b".\r\n")

    def _on_body(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        if self._body is not None:
            # The rest of our body would be read as commands: the session is unusable.
            raise ProtocolError(f"reply before the end of the message data: {reply}", reply=reply)
        tx.data = reply if tx.payload else None
        self._finish(reset=False)

    def _on_quit(self, reply: Reply) -> None:
        self._state = _State.CLOSED
        self._events.append(Closed(reply))

    def _finish(self, *, reset: bool) -> None:
        tx = self._tx
        assert tx is not None and tx.mail is not None
        self._tx = None
        self._state = _State.IDLE
        self._needs_reset = reset
        mail = tx.mail
        # After a refused MAIL the RCPT replies (if pipelined) only say "need MAIL".
        replies = tuple(tx.replies) if mail.positive else (mail,) * len(tx.rcpts)
        result = Transaction(tx.mail_from, tuple(tx.rcpts), mail, replies, tx.data, self.tls_active)
        self._events.append(TransactionDone(result))

    _HANDLERS: Mapping[Stage, Callable[[ClientProtocol, Reply], None]] = {
        Stage.GREETING: _on_greeting,
        Stage.EHLO: _on_ehlo,
        Stage.HELO: _on_helo,
        Stage.STARTTLS: _on_starttls,
        Stage.RSET: _on_rset,
        Stage.MAIL: _on_mail,
        Stage.RCPT: _on_rcpt,
        Stage.DATA: _on_data,
        Stage.BODY: _on_body,
        Stage.QUIT: _on_quit,
    }
