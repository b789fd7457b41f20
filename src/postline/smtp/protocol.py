"""The SMTP server as a sans-I/O state machine (in the manner of h11): no sockets, no clock.

The adapter feeds what it reads to :meth:`ServerProtocol.receive_data`, writes what
:meth:`ServerProtocol.bytes_to_send` returns, and acts on :meth:`ServerProtocol.next_event`
(the contract is in :mod:`postline.smtp.events`). Timeouts, TLS, connection limits,
credential checks, spooling and slowing down failing clients are the adapter's.

Phases: COMMAND (lines of at most 512 octets; AUTH lines up to 12288) → DATA (the stream
goes to :class:`postline.smtp.data.DataReader`, content leaves as DataChunk events) and
three pauses where the machine waits for the adapter's decision — TLS handshake, AUTH
verdict, message commit — during which input is kept (or, for TLS, discarded) and
processed in order afterwards. PIPELINING (RFC 2920) needs nothing more: every complete
line in a read is answered in order and replies queue up. What each command does is in
:mod:`postline.smtp.verbs`.

Every 5xx counts as an error and ``max_errors`` of them end the session with 421.
"""

from __future__ import annotations

from collections import deque

from postline.smtp import replies as r
from postline.smtp import sasl
from postline.smtp.commands import CommandError, MailParams, split_command
from postline.smtp.data import DataReader, Refusal
from postline.smtp.events import (
    CloseConnection,
    DataChunk,
    Envelope,
    Event,
    Limits,
    MessageAborted,
    MessageComplete,
    MessageRefused,
    Phase,
    SessionPolicy,
)
from postline.smtp.lines import LineReader
from postline.smtp.verbs import COMMANDS, auth_response

__all__ = ["Phase", "ServerProtocol"]  # Phase lives in events.py; tests import it from here

_PAUSED = (Phase.WAIT_TLS, Phase.WAIT_AUTH, Phase.WAIT_MESSAGE, Phase.CLOSED)


class ServerProtocol:
    """One SMTP server session. The greeting is queued on construction."""

    def __init__(self, policy: SessionPolicy, limits: Limits | None = None) -> None:
        self.policy = policy
        self.limits = limits or Limits()
        self.phase = Phase.COMMAND
        self.tls = policy.tls_active
        self.helo: str | None = None
        self.esmtp = False
        self.username: str | None = None
        self.errors = 0
        self._lines = LineReader(self.limits.max_command_line, self.limits.max_auth_line)
        self._out: list[bytes] = [r.encode(r.greeting(policy.hostname))]
        self._events: deque[Event] = deque()
        self._reset_transaction()
        self._sasl: sasl.Prompt | None = None  # the 334 answered by the next line
        self._auth_user = ""  # the username awaiting auth_result()

    # -- the adapter's side ------------------------------------------------------------

    def bytes_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def waiting(self) -> bool:
        """A decision of the adapter's is awaited; input is only buffered meanwhile, so the
        adapter should pause reading until it has called the matching method."""
        return self.phase in (Phase.WAIT_TLS, Phase.WAIT_AUTH, Phase.WAIT_MESSAGE)

    def receive_data(self, data: bytes) -> None:
        if self.phase in (Phase.CLOSED, Phase.WAIT_TLS):
            return  # plaintext after STARTTLS is never trusted; after close, nothing is
        if self.phase is Phase.DATA and not self._lines.buf:
            self._feed_data(data)  # the common case of a large message: no copy to a buffer
        else:
            self._lines.buf += data
        self._process()

    def receive_eof(self) -> None:
        """The client closed. A decision still awaited may be given; nothing is sent."""
        if self.phase is Phase.DATA:
            self._events.append(MessageAborted())
        self.phase = Phase.CLOSED

    def close(self, reply: str = r.S421_SHUTTING_DOWN) -> None:
        """End the session from the adapter's side (timeout, shutdown) with ``reply``."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.DATA:
            self._events.append(MessageAborted())
        self._close(reply)

    # The decision methods below do nothing once the session is closed (the client left,
    # or the adapter closed it), so a decision racing with a close needs no special case.

    def tls_started(self) -> None:
        """The handshake succeeded: start over as after the greeting (RFC 3207 §4.2)."""
        if not self._expect(Phase.WAIT_TLS):
            return
        self.tls = True
        self.helo, self.esmtp, self.username = None, False, None
        self._resume()

    def auth_result(self, ok: bool) -> None:
        if not self._expect(Phase.WAIT_AUTH):
            return
        if ok:
            self.username = self._auth_user
            self._reply(r.S235_AUTH_OK)
        else:
            self._refuse(r.S535_AUTH_FAILED)
        self._resume()

    def accept_message(self, queue_id: str) -> None:
        """The message is durably spooled: 250."""
        if not self._expect(Phase.WAIT_MESSAGE):
            return
        self._reply(r.queued(queue_id))
        self._reset_transaction()
        self._resume()

    def refuse_message(self, reply: str) -> None:
        """The message was not taken (e.g. 452 storage full, 554 bad X-SMTPAPI)."""
        if not self._expect(Phase.WAIT_MESSAGE):
            return
        if len(reply) < 4 or reply[0] not in "45" or not reply[:3].isdigit() or reply[3] != " ":
            raise ValueError(f"not a 4xx/5xx single-line reply: {reply!r}")
        self._reply(reply)
        self._reset_transaction()
        self._resume()

    # -- internals: input --------------------------------------------------------------

    def _expect(self, phase: Phase) -> bool:
        """True when ``phase`` is awaited, False when closed; otherwise a bug in the caller."""
        if self.phase is Phase.CLOSED:
            return False
        if self.phase is not phase:
            raise RuntimeError(f"not waiting for {phase.value} (phase: {self.phase.value})")
        return True

    def _resume(self) -> None:
        self.phase = Phase.COMMAND
        self._process()

    def _process(self) -> None:
        while self.phase not in _PAUSED:
            if self.phase is Phase.DATA:
                if not self._lines.buf:
                    return
                self._feed_data(self._lines.take())
                continue
            line = self._next_line()
            if line is None:
                return
            self._on_line(line)

    def _next_line(self) -> str | None:
        """The next command line; refused lines are answered and skipped."""
        while (line := self._lines.next_line(self.phase is Phase.AUTH_INPUT)) is not None:
            if isinstance(line, str):
                self._line_error(line)
                continue
            text = _text(line)
            if text is not None:
                return text
            self._line_error(r.S501_SYNTAX)
        return None

    def _on_line(self, line: str) -> None:
        try:
            if self.phase is Phase.AUTH_INPUT:
                auth_response(self, line)
            else:
                self._on_command(line)
        except CommandError as e:
            self._line_error(e.reply)

    def _line_error(self, reply: str) -> None:
        if self.phase is Phase.AUTH_INPUT:  # any error ends the SASL exchange
            self.phase, self._sasl = Phase.COMMAND, None
        self._refuse(reply)

    def _on_command(self, line: str) -> None:
        verb, arg = split_command(line)
        handler = COMMANDS.get(verb)
        if handler is None:
            raise CommandError(r.S500_UNKNOWN_COMMAND)
        handler(self, arg)

    # -- internals: output -------------------------------------------------------------

    def _reply(self, reply: str) -> None:
        self._out.append(r.encode(reply))

    def _refuse(self, reply: str) -> None:
        """Send a refusal; 5xx ones count towards ``max_errors``."""
        self._reply(reply)
        if reply.startswith("5"):
            self.errors += 1
            if self.errors >= self.limits.max_errors and self.phase is not Phase.CLOSED:
                self._close(r.S421_TOO_MANY_ERRORS)

    def _close(self, reply: str) -> None:
        self._reply(reply)
        self.phase = Phase.CLOSED
        self._lines.clear()
        self._events.append(CloseConnection(reply))

    def _reset_transaction(self) -> None:
        self._mail: tuple[str, MailParams] | None = None
        self._rcpts: list[str] = []
        self._reader: DataReader | None = None

    # -- internals: the message -----------------------------------------------------------

    def _envelope(self) -> Envelope:
        assert self._mail is not None and self.helo is not None
        sender, params = self._mail
        return Envelope(
            self.helo, sender, tuple(self._rcpts), params.size, params.body,
            params.smtputf8, self.username, self.tls,
        )  # fmt: skip

    def _feed_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        out, rest = reader.feed(data)
        if out:
            self._events.append(DataChunk(out))
        if rest is None:
            return
        self._lines.buf += rest
        if reader.refused is None:
            self.phase = Phase.WAIT_MESSAGE
            self._events.append(MessageComplete(self._envelope(), reader.size))
            return
        reply = r.S552_TOO_BIG if reader.refused is Refusal.TOO_BIG else r.S554_BARE_NEWLINE
        self._events.append(MessageRefused(reply))
        self._reset_transaction()
        self.phase = Phase.COMMAND
        self._reply(reply)  # a refused message is not a protocol error: not counted


def _text(line: bytes) -> str | None:
    """A command line as text: UTF-8 (RFC 6531 addresses) without NUL, else None."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text
