"""Why an SMTP delivery attempt failed, named by cause and grouped by consequence.

The groups follow the scopes of Postfix's ``smtp/smtp_trouble.c``; each error carries the
:class:`~postline.model.outcomes.Scope` it implies, the enhanced status code (RFC 3463) a
bounce or deferral should carry, and the reply text to record:

- :class:`SiteError`: the destination cannot be used now (refused connection, greeting
  rejected, TLS required but not offered). Defer everything queued for the site.
- :class:`SessionError`: this connection broke (timeout, lost connection, 421, garbled
  reply). Retry the message on another connection. Raised before the session was
  established (connect, greeting, EHLO, STARTTLS) it counts against the site, because the
  next connection to that host will most likely meet the same fate.
- :class:`MessageError`: this message cannot be sent as it is (bigger than the server's
  SIZE, needs SMTPUTF8, a line over 998 characters). Permanent; raised *before* anything
  is written, so the connection stays usable.

Replies to MAIL, RCPT and DATA are not errors: they come back in a ``Transaction`` and the
classifier decides per recipient. The one exception is 421 (RFC 5321 §3.8: the server is
closing the channel), which ends the session wherever it appears: :class:`ServiceClosing`.

Anything else raised while one job is rendered, signed or sent is unforeseen, and
:func:`job_failure` still turns it into an outcome, so that no exception can keep a job's
window slot or lease: a block when rendering the stored message failed in a way that will
not change on a retry (the message's fault), a deferral otherwise (it may pass).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from postline.model.outcomes import Bounced, Deferred, Scope

if TYPE_CHECKING:
    from postline.deliver.replies import Reply


class Stage(enum.Enum):
    """Where in the session something happened; the value reads well in a message."""

    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    TLS = "TLS handshake"
    RSET = "RSET"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    BODY = "end of data"  # the message content and the final reply to it
    QUIT = "QUIT"


# Before the session is established, a session failure is a property of the host.
_SETUP_STAGES = frozenset(
    {Stage.CONNECT, Stage.GREETING, Stage.EHLO, Stage.HELO, Stage.STARTTLS, Stage.TLS}
)


class SmtpClientError(Exception):
    """Base of every delivery error; ``response`` is what the event log should show."""

    default_scope: ClassVar[Scope] = Scope.SESSION
    permanent: ClassVar[bool] = False
    status: ClassVar[str] = "4.4.2"
    throttled: ClassVar[bool] = False  # the remote asked us to slow down

    def __init__(self, message: str, *, stage: Stage | None = None, reply: Reply | None = None):
        super().__init__(message)
        self.stage = stage
        self.reply = reply  # the reply that caused this, if any
        self.scope = self._scope()

    def _scope(self) -> Scope:
        return self.default_scope

    @property
    def response(self) -> str:
        """The remote reply if there was one, else our own description."""
        return str(self.reply) if self.reply is not None else str(self)


class SiteError(SmtpClientError):
    default_scope = Scope.SITE


class SessionError(SmtpClientError):
    def _scope(self) -> Scope:
        return Scope.SITE if self.stage in _SETUP_STAGES else Scope.SESSION


class MessageError(SmtpClientError):
    default_scope = Scope.MESSAGE
    permanent = True
    status = "5.6.0"


# -- site ------------------------------------------------------------------------------


class ConnectFailed(SiteError):
    """The TCP connection could not be made (refused, unreachable)."""

    status = "4.4.1"


class SessionRejected(SiteError):
    """The greeting, EHLO or HELO was answered with a failure."""

    status = "4.3.0"


class TlsRequired(SiteError):
    """TLS is required by policy but the server did not offer or refused STARTTLS."""

    status = "4.7.4"


class TlsFailed(SiteError):
    """The TLS handshake failed (certificate verification, protocol mismatch)."""

    status = "4.7.5"


# -- session ---------------------------------------------------------------------------


class Timeout(SessionError):
    """No reply within the stage's time limit (``stage`` says which)."""

    status = "4.4.2"


class ConnectionLost(SessionError):
    """The server closed the connection while we waited for a reply."""

    status = "4.4.2"


class ProtocolError(SessionError):
    """A reply we cannot parse, or one that arrived out of turn."""

    status = "4.5.0"


class ServiceClosing(SessionError):
    """The server replied 421: it is closing the channel (often "too many connections")."""

    status = "4.3.2"
    throttled = True


# -- message (raised before anything is sent) -----------------------------------------


class MessageTooBig(MessageError):
    """The message is larger than the SIZE the server advertised (RFC 1870)."""

    status = "5.3.4"


class SmtpUtf8Unsupported(MessageError):
    """The message needs SMTPUTF8 (RFC 6531) and the server does not offer it."""

    status = "5.6.7"


class LineTooLong(MessageError):
    """A line of the message exceeds 998 characters (RFC 5321 §4.5.3.1.6).

    Folding is the renderer's job (it knows the MIME structure and can use
    quoted-printable or base64); the client refuses rather than corrupt the message.
    """

    status = "5.6.0"


class InvalidAddress(MessageError):
    """An envelope address contains characters that would break the command line."""

    status = "5.1.3"


# -- unforeseen exceptions of one job --------------------------------------------------

# What rendering a stored message raises when the message itself is at fault: the same
# message fails the same way on every attempt (RenderError is a ValueError, and so are
# msgspec's decode errors of a corrupt stored row; RecursionError: nesting too deep).
RENDER_FAULTS = (ValueError, UnicodeError, LookupError, TypeError, RecursionError)
CAUSE_MAX = 200  # characters of the exception text kept in the reason


def job_failure(exc: BaseException, stage: str) -> Bounced | Deferred:
    """The outcome of a job whose ``stage`` ("render", "sign", "send") raised ``exc``."""
    cause = _cause(exc)
    if stage == "render" and isinstance(exc, RENDER_FAULTS):
        reason = f"550 5.6.0 message could not be rendered: {cause}"
        return Bounced(reason, "5.6.0", "blocked", "Content", Scope.MESSAGE)
    return Deferred(f"451 4.3.0 local error while trying to {stage} the message: {cause}")


def _cause(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, blanks squeezed
    return text if len(text) <= CAUSE_MAX else text[: CAUSE_MAX - 3] + "..."
