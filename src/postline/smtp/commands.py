"""Parsing of command lines and of MAIL/RCPT paths and parameters (RFC 5321 §4.1).

Pure functions: a parse either returns a value or raises :class:`CommandError` carrying
the reply to send, so the state machine never formats an error itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from postline.smtp import replies as r

MAX_PATH = 256  # octets of a forward/reverse path, RFC 5321 §4.5.3.1.3
BodyType = Literal["7BIT", "8BITMIME"]

# No controls, spaces or angle brackets inside an address; quoted local parts with spaces
# are legal but unused by real senders, and refusing them keeps the parser simple.
_BAD_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")


class CommandError(Exception):
    """A command the machine refuses; ``reply`` is what to answer."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None  # SIZE= declared by the client (RFC 1870)
    body: BodyType = "7BIT"  # BODY= (RFC 6152)
    smtputf8: bool = False  # RFC 6531


def split_command(line: str) -> tuple[str, str]:
    """``"mail FROM:<a>"`` → ``("MAIL", "FROM:<a>")``."""
    verb, _, arg = line.partition(" ")
    return verb.upper(), arg.strip(" ")


def _path(arg: str, keyword: str, bad: str) -> tuple[str, str]:
    """``FROM:<addr> params`` → (addr, params). The brackets may be missing (many old
    clients), and a space after the colon is tolerated, as Postfix does."""
    if arg[: len(keyword)].upper() != keyword:
        raise CommandError(r.S501_SYNTAX)
    rest = arg[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            raise CommandError(bad)
        address, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            raise CommandError(bad)
    else:
        address, _, params = rest.partition(" ")
    if len(address) > MAX_PATH or _BAD_ADDRESS.search(address):
        raise CommandError(bad)
    if address.startswith("@") and ":" in address:  # RFC 5321 §4.1.2 source route: ignored
        address = address.split(":", 1)[1]
    return address, params.strip(" ")


def _check_utf8(address: str, smtputf8: bool) -> None:
    if not smtputf8 and not address.isascii():
        raise CommandError(r.S553_SMTPUTF8_REQUIRED)


def _domain_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and "@" not in domain)


def parse_mail(arg: str, max_size: int) -> tuple[str, MailParams]:
    """``FROM:<addr> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]`` → (sender, params); ``""`` is
    the null sender. 552 when the declared size is over ``max_size``."""
    address, raw = _path(arg, "FROM:", r.S501_BAD_SENDER)
    params = _mail_params(raw, max_size)
    if address and not _domain_address(address):
        raise CommandError(r.S501_BAD_SENDER)
    _check_utf8(address, params.smtputf8)
    return address, params


def _mail_params(raw: str, max_size: int) -> MailParams:
    size: int | None = None
    body: BodyType = "7BIT"
    smtputf8 = False
    for word in raw.split():
        m = _PARAM.fullmatch(word)
        if not m:
            raise CommandError(r.S501_BAD_PARAMETER)
        key, value = m.group(1).upper(), m.group(2)
        if key == "SIZE" and value is not None and value.isdigit() and len(value) <= 20:
            size = int(value)
            if size > max_size:
                raise CommandError(r.S552_TOO_BIG)
        elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
            body = "8BITMIME" if value.upper() == "8BITMIME" else "7BIT"
        elif key == "SMTPUTF8" and value is None:
            smtputf8 = True
        elif key == "AUTH" and value is not None:
            pass  # RFC 4954 §5: the submitter's identity; we go by the session's AUTH
        elif key in ("SIZE", "BODY", "SMTPUTF8", "AUTH"):
            raise CommandError(r.S501_BAD_PARAMETER)
        else:
            raise CommandError(r.S555_UNKNOWN_PARAMETER)
    return MailParams(size, body, smtputf8)


def parse_rcpt(arg: str, smtputf8: bool) -> str:
    """``TO:<addr>`` → the recipient. No RCPT parameters are offered (no DSN), so any is 555."""
    address, raw = _path(arg, "TO:", r.S501_BAD_RECIPIENT)
    if raw:
        raise CommandError(r.S555_UNKNOWN_PARAMETER)
    if not _domain_address(address):
        raise CommandError(r.S501_BAD_RECIPIENT)
    _check_utf8(address, smtputf8)
    return address
