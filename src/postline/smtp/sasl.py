"""The server side of AUTH PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login).

An exchange is a sequence of steps: :func:`begin` takes the AUTH command's argument,
:func:`respond` each response line; both return either a :class:`Prompt` (a 334 to send,
then wait for the next line) or the credentials for the adapter to verify
(:class:`~postline.smtp.events.AuthRequest`). Refusals raise
:class:`~postline.smtp.commands.CommandError` with their reply: ``*`` cancels (501),
undecodable base64 or a malformed PLAIN message is 501, another mechanism 504.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from postline.smtp import replies as r
from postline.smtp.commands import CommandError
from postline.smtp.events import AuthRequest

MECHANISMS = "PLAIN LOGIN"


@dataclass(frozen=True, slots=True)
class Prompt:
    reply: str  # the 334 to send
    mechanism: str
    username: str | None = None  # LOGIN's, once the client gave it


Step = Prompt | AuthRequest


def begin(arg: str) -> Step:
    """``AUTH <mechanism> [initial-response]``."""
    mechanism, _, initial = arg.partition(" ")
    mechanism, initial = mechanism.upper(), initial.strip(" ")
    if mechanism == "PLAIN":
        return _plain(decode(initial)) if initial else Prompt(r.S334_CHALLENGE, "PLAIN")
    if mechanism == "LOGIN":
        if initial:  # smtplib sends the username along with AUTH LOGIN
            return Prompt(r.S334_PASSWORD, "LOGIN", decode(initial))
        return Prompt(r.S334_USERNAME, "LOGIN")
    raise CommandError(r.S504_AUTH_MECHANISM)


def respond(prompt: Prompt, line: str) -> Step:
    response = decode(line)
    if prompt.mechanism == "PLAIN":
        return _plain(response)
    if prompt.username is None:
        return Prompt(r.S334_PASSWORD, "LOGIN", response)
    return AuthRequest("LOGIN", "", prompt.username, response)


def decode(line: str) -> str:
    """A base64 SASL response as text; ``*`` cancels, ``=`` is the empty response."""
    if line == "*":
        raise CommandError(r.S501_AUTH_CANCELLED)
    if line == "=":
        return ""
    try:
        return binascii.a2b_base64(line.encode("ascii"), strict_mode=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise CommandError(r.S501_AUTH_MALFORMED) from e


def _plain(response: str) -> AuthRequest:
    """``authzid NUL authcid NUL passwd`` (RFC 4616 §2)."""
    parts = response.split("\x00")
    if len(parts) != 3 or not parts[1]:
        raise CommandError(r.S501_AUTH_MALFORMED)
    return AuthRequest("PLAIN", parts[0], parts[1], parts[2])
