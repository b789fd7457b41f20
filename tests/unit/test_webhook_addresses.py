"""Receiver URLs: their form, and which addresses a webhook may reach."""

from __future__ import annotations

import asyncio

import pytest

from postline.testing.dns_server import FakeDnsServer
from postline.webhooks.addresses import (
    GuardedResolver,
    UrlRefused,
    check_url,
    is_public,
    literal_refusal,
)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://user:pw@example.com/",
        "https://user@example.com/",
        "http:///path",
        "example.com/hook",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "javascript:alert(1)",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com/hook?x=1", "example.com"),
        ("http://93.184.216.34:8080/", "93.184.216.34"),
        ("http://[2606:2800:220:1::]/", "2606:2800:220:1::"),
    ],
)
def test_good_urls_give_their_host(url: str, host: str) -> None:
    assert check_url(url) == host


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::"])
def test_public_addresses(address: str) -> None:
    assert is_public(address)


def test_literal_addresses_are_checked_by_the_poster() -> None:
    assert literal_refusal("http://127.0.0.1:9/x", allow_private=False)
    assert literal_refusal("http://[::1]:9/x", allow_private=False)
    assert literal_refusal("http://127.0.0.1:9/x", allow_private=True) is None
    assert literal_refusal("http://93.184.216.34/x", allow_private=False) is None
    assert literal_refusal("http://example.com/x", allow_private=False) is None  # the resolver's


def test_the_resolver_drops_private_answers_over_real_dns() -> None:
    with FakeDnsServer() as dns:
        dns.add_a("public.test", "93.184.216.34")
        dns.add_a("rebind.test", "127.0.0.1")
        dns.add_a("mixed.test", "93.184.216.34")
        dns.add_a("mixed.test", "10.0.0.1")

        async def run() -> None:
            guarded = GuardedResolver(False, [dns.address], 2.0)
            got = await guarded.resolve("public.test", 443)
            assert [r["host"] for r in got] == ["93.184.216.34"]
            with pytest.raises(OSError, match="non-public"):
                await guarded.resolve("rebind.test", 443)
            mixed = await guarded.resolve("mixed.test", 443)
            assert [r["host"] for r in mixed] == ["93.184.216.34"]
            with pytest.raises(UrlRefused, match=r"10\.0\.0\.1"):
                await guarded.check_host("mixed.test")
            with pytest.raises(UrlRefused, match="cannot be resolved"):
                await guarded.check_host("nothing.test")
            await guarded.check_host("public.test")
            relaxed = GuardedResolver(True, [dns.address], 2.0)
            assert [r["host"] for r in await relaxed.resolve("rebind.test", 80)] == ["127.0.0.1"]

        asyncio.run(run())
