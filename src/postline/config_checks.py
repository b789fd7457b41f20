"""Checks of config values that a type alone cannot express (addresses, levels, CIDRs).

Each returns None when the value is good, else a sentence saying what is wrong and what a
good value looks like; config.py turns it into ``<file>: key 'x.y': <sentence>`` at start,
so a typo is one line naming the key, never a traceback later.
"""

from __future__ import annotations

import ipaddress

LOG_LEVELS = ("debug", "info", "warning", "error")


def hostport_problem(text: str, port_required: bool = True) -> str | None:
    """``host:port`` (``[v6]:port`` for IPv6); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if port_required:
            return f"{text!r} is not host:port (e.g. '127.0.0.1:8025')"
        host, port = text, ""
    host = host.strip()
    if host.startswith("[") != host.endswith("]"):
        return f"{text!r}: unbalanced brackets around an IPv6 address (e.g. '[::1]:8025')"
    if not host.strip("[]"):
        return f"{text!r} has no host (e.g. '127.0.0.1:8025' or '0.0.0.0:8025')"
    if port and not (port.isdigit() and 0 <= int(port) <= 65535):
        return f"{text!r}: the port must be a number from 0 to 65535"
    return None


def ip_port_problem(text: str) -> str | None:
    """A nameserver: ``ip`` or ``ip:port`` (``[v6]:port``)."""
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if sep:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            if port.isdigit() and 0 < int(port) <= 65535:
                return None
    return f"{text!r} is not an IP address or ip:port (e.g. '127.0.0.1:53')"


def cidr_problem(text: str) -> str | None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not a network in CIDR form (e.g. '10.0.0.0/8' or '::1/128')"
    return None


def level_problem(text: str) -> str | None:
    if text.lower() in LOG_LEVELS:
        return None
    return f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"


def first(*checks: tuple[str, str | None]) -> None:
    """Raise the first (field, problem) found as the ValueError msgspec reports with its path.

    The field travels as an ``@field:`` prefix that config's error formatter moves into the
    key it names (msgspec gives only the section's path for a ``__post_init__`` error).
    """
    for field, problem in checks:
        if problem is not None:
            raise ValueError(f"@{field}: {problem}")
