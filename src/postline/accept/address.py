"""Email address syntax: a pragmatic ``addr-spec`` check (RFC 5321/5322, RFC 6531).

Accepted: ``local@domain`` where ``local`` is a dot-atom (ASCII ``atext`` plus any non-ASCII
character, for SMTPUTF8) of at most 64 characters, and ``domain`` has at least two labels
of letters, digits and inner hyphens, or is an internationalized name that IDNA2008 (with
the UTS #46 mapping) encodes to such a domain; an ``xn--`` label must be a valid A-label.
The whole address is at most 254 octets and contains no whitespace, control characters,
CR or LF. Quoted local parts and address literals are refused: they are
legal but practically unused, and SendGrid refuses them as well.
"""

from __future__ import annotations

import re
from functools import lru_cache

from postline.model.domain import a_label

MAX_ADDRESS = 254
MAX_LOCAL = 64
MAX_DOMAIN = 253

# whitespace (Unicode), C0/C1 controls, DEL and lone surrogates
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
_ASCII_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ASCII_ADDRESS = re.compile(
    rf"(?=[^@]{{1,{MAX_LOCAL}}}@){_ASCII_ATOM}(?:\.{_ASCII_ATOM})*@(?:{_LABEL}\.)+{_LABEL}"
)


def is_valid_email(address: str) -> bool:
    """True when ``address`` is a deliverable-looking ``local@domain``."""
    if address.isascii():  # the common case: one regex
        if len(address) > MAX_ADDRESS or _ASCII_ADDRESS.fullmatch(address) is None:
            return False
        return "xn--" not in address.lower() or _valid_idn(address.rpartition("@")[2])
    return _valid_international(address)


def _valid_international(address: str) -> bool:
    if len(address.encode("utf-8", "surrogatepass")) > MAX_ADDRESS or _BAD_CHAR.search(address):
        return False
    local, at, domain = address.rpartition("@")
    if not at or len(local) > MAX_LOCAL or _LOCAL.fullmatch(local) is None:
        return False
    return _valid_domain(domain)


def _valid_domain(domain: str) -> bool:
    if domain.isascii() and "xn--" not in domain.lower():
        return len(domain) <= MAX_DOMAIN and _DOMAIN.fullmatch(domain) is not None
    return _valid_idn(domain)


@lru_cache(maxsize=4096)
def _valid_idn(domain: str) -> bool:
    """IDNA2008 accepts ``domain`` and its A-label form is a host name (no trailing dot)."""
    encoded = a_label(domain)
    if encoded is None or encoded.endswith("."):
        return False
    return len(encoded) <= MAX_DOMAIN and _DOMAIN.fullmatch(encoded) is not None
