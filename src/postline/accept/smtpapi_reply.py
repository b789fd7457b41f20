"""The replies of the X-SMTPAPI checks (smtpapi.py, smtpapi_to.py): one 5xx line each,
ASCII, at most 510 octets, quoting the client's key or value short and escaped, and the
small value helpers the checks share."""

from __future__ import annotations

import re
from typing import NoReturn

DOCS = "https://docs.sendgrid.com/for-developers/sending-email/building-an-x-smtpapi-header"
MAX_REPLY = 510  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF
MAX_SHOWN = 40  # characters of a client's key or value quoted in a reply

C550_CONTENT = "550 5.6.0"  # RFC 3463 X.6.0: other or undefined media (content) error
C550_ADDRESS = "550 5.1.3"  # X.1.3: bad destination mailbox address syntax
C550_TOO_MANY = "550 5.5.3"  # X.5.3: too many recipients


class SmtpApiError(Exception):
    """The header cannot be acted on; ``reply`` is the complete SMTP reply (one 5xx line)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def smtp_reply(code: str, text: str, suffix: str = "") -> str:
    """``code text suffix`` as one ASCII line of at most :data:`MAX_REPLY` octets; the text
    (which may quote the client) is escaped and, when too long, shortened, the suffix kept."""
    text = _CONTROLS.sub("?", text.encode("ascii", "backslashreplace").decode("ascii"))
    room = MAX_REPLY - len(code) - 1 - len(suffix)
    if len(text) > room:
        text = text[: room - 3] + "..."
    return f"{code} {text}{suffix}"


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def fail(text: str, code: str = C550_CONTENT, docs: bool = False) -> NoReturn:
    suffix = f"; see {DOCS}" if docs else ""
    raise SmtpApiError(smtp_reply(code, f"X-SMTPAPI: {text}", suffix))


def show(value: object) -> str:
    """A client's key or value as quoted in a reply: short, one line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_SHOWN:
        text = text[: MAX_SHOWN - 3] + "..."
    return "'" + text + "'"


def json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else "an object"


def is_set(value: object) -> bool:
    """None, "", [] and {} ask for nothing (as on the HTTP path); 0 is a value."""
    return value is not None and value != "" and value != [] and value != {}
