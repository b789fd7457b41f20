"""Where a webhook may post: the URL's form and the addresses its host resolves to.

A receiver URL is ``http`` or ``https``, with a host and no userinfo. Its host must resolve
only to public addresses (``ipaddress``'s ``is_global``, and none of loopback, private,
link-local, multicast, reserved, unspecified) unless ``[webhooks] allow_private``; this is
checked when a webhook is created and again at every connection: :class:`GuardedResolver`
is the aiohttp resolver of the poster, so a name that answered a public address at
creation and a private one later (DNS rebinding) is never connected to. aiohttp does not
ask the resolver about literal addresses, so :func:`literal_refusal` checks those.

Names are resolved with ``[dns] nameservers`` when set (dnspython, A and AAAA), else with
the system's ``getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult


class UrlRefused(Exception):
    """A receiver URL that may not be used; ``str()`` is the reason, for a 400 or a log."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bad = ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (bad or ip.is_reserved or ip.is_unspecified)


def check_url(url: str) -> str:
    """The URL's host (no brackets), or :class:`UrlRefused` naming what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"'{url}' is not a valid url: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"'{url}' is not a valid url: the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused(f"'{url}' is not a valid url: user information is not allowed")
    host = parts.hostname
    if not host or port == 0 or any(c.isspace() for c in url):
        raise UrlRefused(f"'{url}' is not a valid url")
    return host


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def literal_refusal(url: str, allow_private: bool) -> str | None:
    """Why a URL whose host is a literal address may not be posted to, or None."""
    try:
        address = _literal(check_url(url))
    except UrlRefused as exc:
        return str(exc)
    if address is None or allow_private or is_public(address):
        return None
    return f"{address} is not a public address"


class GuardedResolver(AbstractResolver):
    """Resolves names and keeps only the addresses a webhook may connect to."""

    def __init__(self, allow_private: bool, nameservers: list[str], timeout: float) -> None:
        self.allow_private = allow_private
        self._dns: dns.asyncresolver.Resolver | None = None
        if nameservers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [_nameserver(n) for n in nameservers]
            self._dns.timeout = self._dns.lifetime = timeout
            self._dns.cache = None

    async def addresses(self, host: str) -> list[str]:
        """Every address of ``host`` (OSError when there is none)."""
        literal = _literal(host)
        if literal is not None:
            return [literal]
        if self._dns is None:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
            return list(dict.fromkeys(str(info[4][0]) for info in infos))
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(host, rdtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as exc:
                raise OSError(f"cannot resolve {host}: {exc}") from None
            found += [r.to_text() for r in answer]
        if not found:
            raise OSError(f"{host} has no address")
        return found

    async def check_host(self, host: str) -> None:
        """At creation: UrlRefused unless every address of ``host`` may be used."""
        try:
            found = await self.addresses(host)
        except OSError as exc:
            raise UrlRefused(f"the host {host} cannot be resolved: {exc}") from None
        bad = [a for a in found if not (self.allow_private or is_public(a))]
        if bad:
            raise UrlRefused(
                f"the host {host} resolves to {bad[0]}, which is not a public address "
                "(set [webhooks] allow_private to post to private networks)"
            )

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.addresses(host)
        allowed = [a for a in found if self.allow_private or is_public(a)]
        if not allowed:
            raise OSError(f"{host} resolves only to non-public addresses ({found[0]})")
        return [_result(host, a, port) for a in allowed]

    async def close(self) -> None:
        return None


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(
        hostname=host,
        host=address,
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST,
    )


def _nameserver(text: str) -> dns.nameserver.Nameserver:
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, raw = text.split(":")
        port = int(raw)
    return dns.nameserver.Do53Nameserver(host, port)
