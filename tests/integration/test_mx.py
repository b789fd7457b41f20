"""MX routing over real DNS packets on loopback (FakeDnsServer), on an injected clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from postline.deliver.mx import Route, RouteFailure, Router
from postline.model.outcomes import Bounced, Deferred, Scope
from postline.testing.dns_server import FakeDnsServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_router(
    server: FakeDnsServer, clock: Clock, routes: dict[str, str] | None = None
) -> Router:
    return Router(routes or {}, [server.address], 0.3, clock, rng=random.Random(7))


def route(router: Router, domain: str) -> Route | RouteFailure:
    return asyncio.run(router.route(domain))


def test_preference_order(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("example.com", [(20, "mx2.example.com"), (10, "mx1.example.com")])
    result = route(make_router(dns_server, clock), "example.com")
    assert result == Route("mx1.example.com", [("mx1.example.com", 25), ("mx2.example.com", 25)])


def test_equal_preferences_are_shuffled_but_precede_worse(
    dns_server: FakeDnsServer, clock: Clock
) -> None:
    dns_server.add_mx("example.com", [(5, "c.mx.test"), (10, "a.mx.test"), (10, "b.mx.test")])
    router = make_router(dns_server, clock)
    orders = set()
    for _ in range(30):
        result = route(router, "example.com")
        assert isinstance(result, Route)
        assert result.hosts[0] == ("c.mx.test", 25)
        orders.add(tuple(h for h, _ in result.hosts[1:]))
    assert orders == {("a.mx.test", "b.mx.test"), ("b.mx.test", "a.mx.test")}


def test_ttl_caching_on_injected_clock(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("example.com", [(10, "mx.example.com")], ttl=60)
    router = make_router(dns_server, clock)
    route(router, "example.com")
    route(router, "example.com")
    assert dns_server.query_count("example.com", "MX") == 1
    clock.now += 59.9
    route(router, "example.com")
    assert dns_server.query_count("example.com", "MX") == 1
    clock.now += 0.2
    route(router, "example.com")
    assert dns_server.query_count("example.com", "MX") == 2


def test_zero_ttl_is_cached_one_second(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("example.com", [(10, "mx.example.com")], ttl=0)
    router = make_router(dns_server, clock)
    route(router, "example.com")
    clock.now += 0.5
    route(router, "example.com")
    assert dns_server.query_count("example.com", "MX") == 1
    clock.now += 0.6
    route(router, "example.com")
    assert dns_server.query_count("example.com", "MX") == 2


def test_concurrent_lookups_share_one_query(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("example.com", [(10, "mx.example.com")])
    router = make_router(dns_server, clock)

    async def many() -> list[Route | RouteFailure]:
        return await asyncio.gather(*(router.route("example.com") for _ in range(20)))

    assert all(isinstance(r, Route) for r in asyncio.run(many()))
    assert dns_server.query_count("example.com", "MX") == 1


def test_implicit_mx_falls_back_to_address(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_a("example.org", "192.0.2.10")
    router = make_router(dns_server, clock)
    assert route(router, "example.org") == Route("example.org", [("example.org", 25)])
    assert asyncio.run(router.addresses("example.org")) == ["192.0.2.10"]


def test_implicit_mx_with_only_aaaa(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_aaaa("v6.example", "2001:db8::1")
    assert route(make_router(dns_server, clock), "v6.example") == Route(
        "v6.example", [("v6.example", 25)]
    )


def test_no_mx_and_no_address_is_permanent(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_txt("empty.example", "v=spf1 -all")
    result = route(make_router(dns_server, clock), "empty.example")
    assert isinstance(result, RouteFailure)
    assert (result.kind, result.permanent) == ("no_address", True)


def test_null_mx_is_permanent(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("nomail.example", [(0, ".")])
    result = route(make_router(dns_server, clock), "nomail.example")
    assert isinstance(result, RouteFailure)
    assert (result.kind, result.permanent) == ("null_mx", True)
    assert "5.1.10" in result.message and "null MX" in result.message


def test_nxdomain_is_permanent_and_cached_for_soa_minimum(
    dns_server: FakeDnsServer, clock: Clock
) -> None:
    dns_server.set_nxdomain("gone.example")
    router = make_router(dns_server, clock)
    result = route(router, "gone.example")
    assert isinstance(result, RouteFailure)
    assert (result.kind, result.permanent) == ("nxdomain", True)
    assert result.message.startswith("550 5.1.2")
    route(router, "gone.example")
    assert dns_server.query_count("gone.example") == 1
    clock.now += dns_server.negative_ttl + 0.1
    route(router, "gone.example")
    assert dns_server.query_count("gone.example") == 2


def test_unknown_name_is_nxdomain(dns_server: FakeDnsServer, clock: Clock) -> None:
    result = route(make_router(dns_server, clock), "never-added.example")
    assert isinstance(result, RouteFailure) and result.kind == "nxdomain"


def test_servfail_is_temporary(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.set_servfail("broken.example")
    router = make_router(dns_server, clock)
    result = route(router, "broken.example")
    assert isinstance(result, RouteFailure)
    assert (result.kind, result.permanent) == ("servfail", False)
    assert result.message.startswith("451 4.4.3")
    # Fixed on the server: a retry one second later asks again and succeeds.
    dns_server.add_mx("broken.example", [(10, "mx.broken.example")])
    clock.now += 1.0
    assert isinstance(route(router, "broken.example"), Route)


def test_timeout_is_temporary(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.set_timeout("slow.example")
    result = route(make_router(dns_server, clock), "slow.example")
    assert isinstance(result, RouteFailure)
    assert (result.kind, result.permanent) == ("timeout", False)


def test_unreachable_nameserver_is_temporary(clock: Clock) -> None:
    with FakeDnsServer() as server:
        address = server.address
    router = Router({}, [address], 0.3, clock)  # nobody listens there any more
    result = route(router, "example.com")
    assert isinstance(result, RouteFailure) and not result.permanent


def test_routes_table_exact_then_star(dns_server: FakeDnsServer, clock: Clock) -> None:
    routes = {"special.example": "10.0.0.5:2525", "*": "127.0.0.1:2526"}
    router = make_router(dns_server, clock, routes)
    assert route(router, "Special.Example") == Route("route:10.0.0.5:2525", [("10.0.0.5", 2525)])
    assert route(router, "other.example") == Route("route:127.0.0.1:2526", [("127.0.0.1", 2526)])
    assert dns_server.queries == 0


def test_route_overrides_dns(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("example.com", [(10, "mx.example.com")])
    router = make_router(dns_server, clock, {"example.com": "sink.local"})
    assert route(router, "example.com") == Route("route:sink.local:25", [("sink.local", 25)])


def test_domains_sharing_mx_hosts_share_a_site(dns_server: FakeDnsServer, clock: Clock) -> None:
    hosts = [(10, "mx1.provider.test"), (10, "mx2.provider.test"), (20, "backup.provider.test")]
    dns_server.add_mx("alpha.example", hosts)
    dns_server.add_mx("beta.example", list(reversed(hosts)))
    router = make_router(dns_server, clock)
    a, b = route(router, "alpha.example"), route(router, "beta.example")
    assert isinstance(a, Route) and isinstance(b, Route)
    assert a.site == b.site == "mx1.provider.test,mx2.provider.test"


def test_idna_domain_is_queried_as_a_label(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("xn--bcher-kva.example", [(10, "mx.example.com")])
    result = route(make_router(dns_server, clock), "Bücher.example")
    assert isinstance(result, Route) and result.site == "mx.example.com"


def test_addresses_a_then_aaaa_and_cached(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_a("mx.example.com", "192.0.2.1")
    dns_server.add_aaaa("mx.example.com", "2001:db8::25")
    router = make_router(dns_server, clock)
    assert asyncio.run(router.addresses("mx.example.com")) == ["192.0.2.1", "2001:db8::25"]
    assert asyncio.run(router.addresses("mx.example.com")) == ["192.0.2.1", "2001:db8::25"]
    assert dns_server.queries == 2
    assert asyncio.run(router.addresses("198.51.100.7")) == ["198.51.100.7"]
    assert asyncio.run(router.addresses("missing.example")) == []


def test_address_literal_routes_to_itself(dns_server: FakeDnsServer, clock: Clock) -> None:
    result = route(make_router(dns_server, clock), "[192.0.2.9]")
    assert result == Route("[192.0.2.9]", [("192.0.2.9", 25)])


def test_tcp_fallback_for_large_answers(dns_server: FakeDnsServer, clock: Clock) -> None:
    hosts = [(10 + i, f"mx{i:02d}.a-rather-long-provider-name.example") for i in range(40)]
    dns_server.add_mx("big.example", hosts)
    result = route(make_router(dns_server, clock), "big.example")
    assert isinstance(result, Route) and len(result.hosts) == 40
    assert result.hosts[0][0] == "mx00.a-rather-long-provider-name.example"
    assert dns_server.tcp_queries == 1


def test_dot_beside_real_hosts_is_ignored(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("odd.example", [(0, "."), (10, "mx.odd.example")])
    result = route(make_router(dns_server, clock), "odd.example")
    assert result == Route("mx.odd.example", [("mx.odd.example", 25)])


def test_failures_carry_their_outcome(dns_server: FakeDnsServer, clock: Clock) -> None:
    dns_server.add_mx("nomail.example", [(0, ".")])
    dns_server.set_servfail("broken.example")
    router = make_router(dns_server, clock)
    null_mx, servfail = route(router, "nomail.example"), route(router, "broken.example")
    assert isinstance(null_mx, RouteFailure) and isinstance(servfail, RouteFailure)
    bounced, deferred = null_mx.outcome(), servfail.outcome()
    assert isinstance(bounced, Bounced) and bounced.status == "5.1.10"
    assert (bounced.type, bounced.scope) == ("bounce", Scope.RECIPIENT)
    assert isinstance(deferred, Deferred) and deferred.scope is Scope.SITE
