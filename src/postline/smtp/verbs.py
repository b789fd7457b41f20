"""What each SMTP command does: one handler per verb, ``smtp_<verb>(proto, arg)``.

The handlers are part of :class:`postline.smtp.protocol.ServerProtocol`, kept apart from
its input and output mechanics: each reads and changes the machine's state directly, queues
its reply, and refuses by raising :class:`~postline.smtp.commands.CommandError` (argument
parsing is in :mod:`postline.smtp.commands`, the SASL exchange in :mod:`postline.smtp.sasl`).
:data:`COMMANDS` maps a verb to its handler.

Policies: MAIL needs AUTH unless the adapter marked the client trusted (530); AUTH needs
TLS unless plaintext AUTH is allowed for this client (538); STARTTLS forgets everything
learnt from the client (RFC 3207 §4.2) and drops whatever was pipelined behind it
(CVE-2011-0411).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from postline.smtp import replies as r
from postline.smtp import sasl
from postline.smtp.commands import CommandError, parse_mail, parse_rcpt
from postline.smtp.data import DataReader
from postline.smtp.events import MessageStart, Phase, StartTls

if TYPE_CHECKING:  # protocol.py dispatches to this module
    from postline.smtp.protocol import ServerProtocol


def _ehlo_lines(proto: ServerProtocol) -> list[str]:
    p = proto.policy
    lines = [p.hostname, "PIPELINING", f"SIZE {proto.limits.max_message_size}"]
    lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    if p.tls_available and not proto.tls:
        lines.append("STARTTLS")
    if p.auth_enabled and (proto.tls or p.plaintext_auth):
        lines.append("AUTH " + sasl.MECHANISMS)
    return lines


def smtp_ehlo(proto: ServerProtocol, arg: str) -> None:
    if not arg:
        raise CommandError(r.S501_NO_HOSTNAME)
    proto._reset_transaction()
    proto.helo, proto.esmtp = arg, True
    proto._reply(r.multiline(250, _ehlo_lines(proto)))


def smtp_helo(proto: ServerProtocol, arg: str) -> None:
    if not arg:
        raise CommandError(r.S501_NO_HOSTNAME)
    proto._reset_transaction()
    proto.helo, proto.esmtp = arg, False
    proto._reply(f"250 {proto.policy.hostname}")


def smtp_mail(proto: ServerProtocol, arg: str) -> None:
    if proto.helo is None:
        raise CommandError(r.S503_NEED_HELO)
    if proto._mail is not None:
        raise CommandError(r.S503_NESTED_MAIL)
    if proto.username is None and not proto.policy.trusted:
        raise CommandError(r.S530_AUTH_REQUIRED)
    proto._mail = parse_mail(arg, proto.limits.max_message_size)
    proto._reply(r.S250_SENDER_OK)


def smtp_rcpt(proto: ServerProtocol, arg: str) -> None:
    if proto._mail is None:
        raise CommandError(r.S503_NEED_MAIL)
    if len(proto._rcpts) >= proto.limits.max_recipients:
        proto._reply(r.S452_TOO_MANY_RCPTS)  # RFC 5321 §4.5.3.1.10: 452, not an error
        return
    proto._rcpts.append(parse_rcpt(arg, proto._mail[1].smtputf8))
    proto._reply(r.S250_RCPT_OK)


def smtp_data(proto: ServerProtocol, arg: str) -> None:
    if arg:
        raise CommandError(r.S501_SYNTAX)
    if proto._mail is None:
        raise CommandError(r.S503_NEED_MAIL)
    if not proto._rcpts:
        raise CommandError(r.S554_NO_VALID_RCPTS)
    proto._reply(r.S354_END_DATA)
    proto._reader = DataReader(proto.limits.max_message_size)
    proto.phase = Phase.DATA
    proto._events.append(MessageStart(proto._envelope()))


def smtp_rset(proto: ServerProtocol, arg: str) -> None:
    if arg:
        raise CommandError(r.S501_SYNTAX)
    proto._reset_transaction()
    proto._reply(r.S250_OK)


def smtp_noop(proto: ServerProtocol, arg: str) -> None:
    proto._reply(r.S250_OK)


def smtp_quit(proto: ServerProtocol, arg: str) -> None:
    proto._close(r.S221_BYE)


def smtp_vrfy(proto: ServerProtocol, arg: str) -> None:
    if not arg:
        raise CommandError(r.S501_SYNTAX)
    proto._reply(r.S252_CANNOT_VRFY)


def smtp_expn(proto: ServerProtocol, arg: str) -> None:
    raise CommandError(r.S502_NOT_IMPLEMENTED)


def smtp_help(proto: ServerProtocol, arg: str) -> None:
    proto._reply(r.S214_HELP)


def smtp_starttls(proto: ServerProtocol, arg: str) -> None:
    if arg:
        raise CommandError(r.S501_SYNTAX)
    if proto.tls:
        raise CommandError(r.S503_TLS_ACTIVE)
    if not proto.policy.tls_available:
        proto._reply(r.S454_TLS_UNAVAILABLE)
        return
    if proto._mail is not None:
        raise CommandError(r.S503_BAD_SEQUENCE)
    proto._reply(r.S220_TLS_READY)
    proto._lines.clear()  # pipelined behind STARTTLS: injected in plaintext, dropped
    proto._reset_transaction()
    proto.phase = Phase.WAIT_TLS
    proto._events.append(StartTls())


def smtp_auth(proto: ServerProtocol, arg: str) -> None:
    p = proto.policy
    if not p.auth_enabled:
        raise CommandError(r.S502_NOT_IMPLEMENTED)
    if not proto.esmtp:
        raise CommandError(r.S503_NEED_HELO)
    if proto.username is not None:
        raise CommandError(r.S503_AUTH_ACTIVE)
    if proto._mail is not None:
        raise CommandError(r.S503_BAD_SEQUENCE)
    if not proto.tls and not p.plaintext_auth:
        raise CommandError(r.S538_ENCRYPTION_REQUIRED)
    _sasl_step(proto, sasl.begin(arg))


def auth_response(proto: ServerProtocol, line: str) -> None:
    """A line in the AUTH_INPUT phase: the answer to the 334 sent."""
    assert proto._sasl is not None
    _sasl_step(proto, sasl.respond(proto._sasl, line))


def _sasl_step(proto: ServerProtocol, step: sasl.Step) -> None:
    if isinstance(step, sasl.Prompt):
        proto._sasl, proto.phase = step, Phase.AUTH_INPUT
        proto._reply(step.reply)
    else:
        proto._sasl, proto._auth_user = None, step.username
        proto.phase = Phase.WAIT_AUTH
        proto._events.append(step)


COMMANDS: Mapping[str, Callable[[ServerProtocol, str], None]] = {
    "EHLO": smtp_ehlo,
    "HELO": smtp_helo,
    "MAIL": smtp_mail,
    "RCPT": smtp_rcpt,
    "DATA": smtp_data,
    "RSET": smtp_rset,
    "NOOP": smtp_noop,
    "QUIT": smtp_quit,
    "VRFY": smtp_vrfy,
    "EXPN": smtp_expn,
    "HELP": smtp_help,
    "STARTTLS": smtp_starttls,
    "AUTH": smtp_auth,
}
