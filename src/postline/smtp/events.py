"""What the SMTP server machine tells its adapter, and what it is told about the client.

The contract, in order of a session:

- :class:`StartTls`: 220 is queued; send it, do the TLS handshake, call
  ``tls_started()`` (or ``close()`` when the handshake fails). Bytes that arrive
  meanwhile are discarded by the machine (CVE-2011-0411).
- :class:`AuthRequest`: verify the credentials (possibly after a delay for a client
  with recent failures), then call ``auth_result(ok)`` → 235 or 535.
- :class:`MessageStart` → :class:`DataChunk` ... → :class:`MessageComplete`: stream the
  chunks to the spool; on MessageComplete commit durably, then call
  ``accept_message(queue_id)`` (250) or ``refuse_message(reply)`` (e.g. 452 disk full,
  554 bad X-SMTPAPI). :class:`MessageRefused` (the machine refused: too big, bare
  newline; the reply is already queued) and :class:`MessageAborted` (connection gone)
  end a message without a decision: drop what was written.
- :class:`CloseConnection`: send what is queued, then close (after QUIT or a 421).

After every ``receive_data`` the adapter sends ``bytes_to_send()`` and handles all
events. While ``waiting`` is true it should pause reading (input is buffered, not
processed); ``close(reply)`` ends a session from its side (idle timeout, shutdown).
The machine's ``phase`` (:class:`Phase`) says where the session is, e.g. in DATA, whose
deadline is the adapter's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postline.smtp.commands import BodyType


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What the adapter knows about this connection before the first byte."""

    hostname: str  # in the greeting and the EHLO reply
    tls_available: bool = False  # a certificate is loaded: offer STARTTLS
    tls_active: bool = False  # implicit TLS (port 465), or after STARTTLS
    plaintext_auth: bool = False  # AUTH allowed without TLS (loopback, or configured)
    trusted: bool = False  # client in trusted_networks: may relay without AUTH
    auth_enabled: bool = True  # offer AUTH at all


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 30 * 1024 * 1024  # SIZE, enforced during DATA too
    max_recipients: int = 1000  # per message; more get 452 4.5.3
    max_errors: int = 10  # refused commands before 421 and close
    max_command_line: int = 512  # octets with CRLF, RFC 5321 §4.5.3.1.4
    max_auth_line: int = 12288  # AUTH lines, RFC 4954 §4


class Phase(enum.Enum):
    COMMAND = "command"
    AUTH_INPUT = "auth input"  # a 334 was sent; the next line is a SASL response
    DATA = "data"
    WAIT_TLS = "tls handshake"  # waiting for the adapter: tls_started()
    WAIT_AUTH = "auth check"  # auth_result()
    WAIT_MESSAGE = "message commit"  # accept_message() / refuse_message()
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Envelope:
    helo: str
    mail_from: str  # "" for the null sender
    recipients: tuple[str, ...]
    size: int | None  # as declared with SIZE=, None when not
    body: BodyType
    smtputf8: bool
    username: str | None  # the authenticated user, None when trusted by address
    tls: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class AuthRequest:
    mechanism: str  # "PLAIN" or "LOGIN"
    authzid: str  # PLAIN's authorization identity, usually ""
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class MessageStart:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class DataChunk:
    data: bytes  # un-stuffed message content with CRLF line ends; split anywhere


@dataclass(frozen=True, slots=True)
class MessageComplete:
    envelope: Envelope
    size: int  # octets of content delivered in DataChunks


@dataclass(frozen=True, slots=True)
class MessageRefused:
    reply: str  # already queued


@dataclass(frozen=True, slots=True)
class MessageAborted:
    pass


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reply: str  # the last reply queued: 221 or a 421


Event = (
    StartTls
    | AuthRequest
    | MessageStart
    | DataChunk
    | MessageComplete
    | MessageRefused
    | MessageAborted
    | CloseConnection
)
