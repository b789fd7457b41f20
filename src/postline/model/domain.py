"""Domain names as they go on the wire: IDNA2008 with the UTS #46 mapping (the ``idna`` package).

Python's own ``"idna"`` codec is IDNA2003, which maps ``faß`` to ``fass``: a different
domain, perhaps someone else's. IDNA2008 keeps ``ß`` (``xn--fa-hia``), refuses symbols such
as ``☃`` and checks that an ``xn--`` label decodes. UTS #46 (non-transitional) first maps
what users type (upper case, full-width dots and letters) to the IDNA2008 form, as browsers do.

The A-label form is the one key of a domain: the envelope (RFC 5321 allows no U-labels
without SMTPUTF8), MX lookups, queue keys, DKIM ``d=``. So ``bücher.example`` and
``xn--bcher-kva.example`` are one destination.
"""

from __future__ import annotations

from functools import lru_cache

import idna


def a_label(domain: str) -> str | None:
    """The lower-case A-label (ASCII) form of ``domain``, or None if IDNA2008 refuses it.

    An ASCII name without an ``xn--`` label is only lower-cased: its syntax is checked
    elsewhere (an address's domain at accept, a host name by dnspython).
    """
    if domain.isascii() and "xn--" not in domain.lower():
        return domain.lower()
    return _encode(domain)


@lru_cache(maxsize=4096)
def _encode(domain: str) -> str | None:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def domain_key(email: str) -> str:
    """The destination domain of ``email`` as queues and routes know it (A-label, lower case).

    A domain IDNA2008 refuses (accept refuses such addresses; it can only come from an older
    spool) keeps its lower-case spelling, so it still has a queue, and its lookup fails.
    """
    domain = email.rpartition("@")[2]
    if domain.isascii():  # the common case, kept cheap: it runs for every recipient
        return domain.lower()
    return _encode(domain) or domain.lower()


def envelope_address(address: str) -> str:
    """``address`` with its domain as an A-label: only a non-ASCII local part needs SMTPUTF8."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{a_label(domain) or domain}" if at else address


def email_key(email: str) -> str:
    """The one spelling of an address for suppression lists and de-duplication: lower case,
    domain as an A-label (``bob@bücher.example`` and ``bob@xn--bcher-kva.example`` are one)."""
    if email.isascii():  # the common case, kept cheap
        return email.lower()
    local, at, domain = email.rpartition("@")
    return f"{local.lower()}{at}{a_label(domain) or domain.lower()}" if at else email.lower()
