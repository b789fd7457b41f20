"""MX routing: which hosts take mail for a domain, and under which *site* they are grouped.

Strategy, in order (RFC 5321 §5.1):

1. the static ``delivery.routes`` table: the exact domain, then ``"*"``;
2. an address literal (``[192.0.2.1]``) is its own host;
3. the MX records, best preference first, equal preferences shuffled so that load spreads;
4. no MX records (NODATA): the domain itself, if it has A or AAAA records (implicit MX);
5. a null MX (a single ``MX 0 .``, RFC 7505) means the domain accepts no mail: bounce.

The *site* is the MX rollup key (KumoMTA's term): the sorted names of the best-preference MX
hosts, so that ``a.example`` and ``b.example`` served by the same hosts share one queue,
one connection limit and one throttle.

Failures are values: NXDOMAIN and a null MX are permanent (bounce); SERVFAIL, a timeout or no
usable nameserver are temporary (defer). Answers are cached for their TTL as given (at least
1 s, since the clock has a coarser grain than a zero TTL could honour); negative answers for
the SOA's negative TTL (RFC 2308 §5) or :data:`NEGATIVE_TTL` without a SOA; temporary
failures only :data:`FAILURE_TTL`, so that a retry scheduled ``retry_min`` later (1 s in
tests) asks again. Concurrent lookups of one name share a single query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.SOA
import dns.resolver

from postline.deliver.classify import classify_reply
from postline.model.domain import a_label
from postline.model.outcomes import Bounced, Deferred, Delivered, Scope

SMTP_PORT = 25
MIN_TTL = 1.0  # seconds; a TTL of 0 is cached this long (the grain of one lookup)
NEGATIVE_TTL = 5.0  # seconds; NXDOMAIN/NODATA without a SOA in the authority section
FAILURE_TTL = 1.0  # seconds; SERVFAIL/timeout, shared by a burst, never longer
MAX_ENTRIES = 100_000  # cache entries; beyond this, expired then oldest entries go

_MX = dns.rdatatype.MX
_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA


@dataclass(frozen=True, slots=True)
class Route:
    """Where to deliver: ``hosts`` in the order to try, grouped under ``site``."""

    site: str
    hosts: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """No route: ``kind`` names the cause, ``message`` is the SMTP-style reply it implies."""

    kind: str  # null_mx | nxdomain | no_address | bad_domain | servfail | timeout | no_nameserver
    permanent: bool
    message: str

    def outcome(self) -> Bounced | Deferred:
        """What it means for each recipient of the domain: a bounce, or a site-wide deferral."""
        code = int(self.message[:3])
        scope = Scope.RECIPIENT if self.permanent else Scope.SITE
        result = classify_reply(code, self.message[4:], scope=scope)
        assert not isinstance(result, Delivered)
        return result


_Lookup = list[dns.rdata.Rdata] | RouteFailure  # an empty list is NODATA
_Key = tuple[str, dns.rdatatype.RdataType]


class Router:
    """Routes domains to hosts; one per process, shared by all deliveries."""

    def __init__(
        self,
        routes: dict[str, str],
        nameservers: list[str],
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        rng: random.Random | None = None,
        port: int = SMTP_PORT,
    ) -> None:
        self._port = port  # the port of MX hosts (25; tests point it at a fake MTA)
        self._routes = {_route_key(k): _static_route(v) for k, v in routes.items()}
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[_Key, tuple[float, _Lookup]] = {}
        self._locks: dict[_Key, tuple[asyncio.Lock, list[int]]] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._resolver_error = ""
        try:
            self._resolver = _make_resolver(nameservers, timeout)
        except dns.exception.DNSException as exc:
            self._resolver_error = str(exc)

    async def route(self, domain: str) -> Route | RouteFailure:
        static = self._routes.get(_route_key(domain)) or self._routes.get("*")
        if static is not None:
            return static
        name = ascii_domain(domain)
        if name is None:
            return RouteFailure("bad_domain", True, f"550 5.1.2 Invalid domain {domain!r}")
        if name.startswith("["):
            return _literal_route(name)
        mx = await self._lookup(name, _MX)
        if isinstance(mx, RouteFailure):
            return mx
        if not mx:
            return await self._implicit_mx(name)
        return self._from_mx(name, mx)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``; empty if it has none or the lookup failed."""
        if _is_ip(host):
            return [host]
        name = ascii_domain(host)
        if name is None:
            return []
        found: list[str] = []
        for rdtype in (_A, _AAAA):
            result = await self._lookup(name, rdtype)
            if not isinstance(result, RouteFailure):
                found.extend(r.to_text() for r in result)
        return found

    async def _implicit_mx(self, name: str) -> Route | RouteFailure:
        # RFC 5321 §5.1: no MX records, so the domain is its own (implicit) MX host.
        results = [await self._lookup(name, rdtype) for rdtype in (_A, _AAAA)]
        if any(isinstance(r, list) and r for r in results):
            return Route(site=name, hosts=[(name, self._port)])
        temporary = [r for r in results if isinstance(r, RouteFailure) and not r.permanent]
        if temporary:
            return temporary[0]
        return RouteFailure(
            "no_address", True, f"550 5.1.2 Domain {name} has no MX and no address records"
        )

    def _from_mx(self, name: str, records: list[dns.rdata.Rdata]) -> Route | RouteFailure:
        mx = [cast(dns.rdtypes.ANY.MX.MX, r) for r in records]
        pairs = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in mx]
        pairs = [p for p in pairs if p[1] not in ("", ".")]  # "." beside real hosts is ignored
        if not pairs:
            # RFC 7505 §4.1: the domain declares it accepts no mail; reply 556 5.1.10.
            return RouteFailure(
                "null_mx", True, f"556 5.1.10 Recipient domain {name} has a null MX (RFC 7505)"
            )
        best = min(pref for pref, _ in pairs)
        site = ",".join(sorted({host for pref, host in pairs if pref == best}))
        return Route(site=site, hosts=[(h, self._port) for h in self._ordered(pairs)])

    def _ordered(self, pairs: list[tuple[int, str]]) -> list[str]:
        """Hosts by preference, shuffled among equals (RFC 5321 §5.1), without duplicates."""
        keyed = [(pref, self._rng.random(), host) for pref, host in pairs]
        hosts: list[str] = []
        for _, _, host in sorted(keyed):
            if host not in hosts:
                hosts.append(host)
        return hosts

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        key = (name, rdtype)
        cached = self._cached(key)
        if cached is not None:
            return cached
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # one query per name at a time; the others read its answer
                cached = self._cached(key)
                if cached is None:
                    cached, ttl = await self._query(name, rdtype)
                    self._store(key, cached, ttl)
                return cached
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def _cached(self, key: _Key) -> _Lookup | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[key]
            return None
        return entry[1]

    def _store(self, key: _Key, result: _Lookup, ttl: float) -> None:
        now = self._clock()
        if len(self._cache) >= MAX_ENTRIES:
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[k]
            while len(self._cache) >= MAX_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = (now + max(ttl, MIN_TTL), result)

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[_Lookup, float]:
        """One lookup through the resolver, as a value and how long it may be cached."""
        what = f"{dns.rdatatype.to_text(rdtype)} for {name}"
        if self._resolver is None:
            return _temporary("no_nameserver", f"no nameserver: {self._resolver_error}"), 0.0
        try:
            answer = await self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses", {})
            ttl = _negative_ttl(next(iter(responses.values()), None))
            return RouteFailure("nxdomain", True, f"550 5.1.2 Domain {name} does not exist"), ttl
        except dns.exception.Timeout:
            return _temporary("timeout", f"DNS timeout looking up {what}"), FAILURE_TTL
        except dns.resolver.NoNameservers:
            return _temporary("servfail", f"DNS lookup of {what} failed (SERVFAIL)"), FAILURE_TTL
        except (dns.exception.DNSException, OSError) as exc:
            return _temporary("no_nameserver", f"DNS lookup of {what} failed: {exc}"), FAILURE_TTL
        if answer.rrset is None:
            return [], _negative_ttl(answer.response)
        return list(answer.rrset), float(answer.rrset.ttl)


def ascii_domain(domain: str) -> str | None:
    """The lower-case ASCII (IDNA A-label) form of ``domain``, or None if it has none."""
    d = domain.strip().rstrip(".").lower()
    if d.startswith("[") and d.endswith("]"):
        return d if _is_ip(d[1:-1].removeprefix("ipv6:")) else None
    if not d.isascii() or "xn--" in d:  # IDNA2008 + UTS #46, never the IDNA2003 codec
        encoded = a_label(d)
        if encoded is None:
            return None
        d = encoded
    try:
        dns.name.from_text(d)
    except dns.exception.DNSException:
        return None
    return d or None


def _temporary(kind: str, text: str) -> RouteFailure:
    # RFC 3463 X.4.3: directory server failure (DNS); the delivery is deferred.
    return RouteFailure(kind, False, f"451 4.4.3 {text}")


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: the lesser of the SOA's TTL and its MINIMUM field."""
    for rrset in response.authority if response is not None else []:
        if rrset.rdtype == dns.rdatatype.SOA:
            soa = cast(dns.rdtypes.ANY.SOA.SOA, rrset[0])
            return float(min(rrset.ttl, soa.minimum))
    return NEGATIVE_TTL


def _make_resolver(nameservers: list[str], timeout: float) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [_nameserver(ns) for ns in nameservers]
    resolver.timeout = timeout  # per attempt
    resolver.lifetime = timeout  # the whole lookup
    resolver.cache = None  # ours, on the injected clock
    return resolver


def _nameserver(text: str) -> dns.nameserver.Nameserver:
    host, port = _split_host_port(text, 53)
    return dns.nameserver.Do53Nameserver(host, port)


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _route_key(domain: str) -> str:
    """A routes-table key: ``bücher.example`` and ``xn--bcher-kva.example`` are one domain."""
    domain = domain.rstrip(".")
    return a_label(domain) or domain.lower()


def _static_route(target: str) -> Route:
    host, port = _split_host_port(target, SMTP_PORT)
    return Route(site=f"route:{host}:{port}", hosts=[(host, port)])


def _literal_route(literal: str) -> Route:
    # RFC 5321 §4.1.3: an address literal names the host itself.
    address = literal[1:-1].removeprefix("ipv6:")
    return Route(site=literal, hosts=[(address, SMTP_PORT)])


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
