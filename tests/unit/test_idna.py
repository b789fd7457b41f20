"""IDNA2008 + UTS #46 (the ``idna`` package), never Python's IDNA2003 codec, wherever a
domain is encoded: accept, header and envelope addresses, MX lookups, queue keys, DKIM ``d=``."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from postline.accept.address import is_valid_email
from postline.deliver.dkim import DkimSigner
from postline.deliver.mx import Route, Router, ascii_domain
from postline.deliver.render_headers import addr_spec
from postline.deliver.smtp_protocol import ClientProtocol
from postline.model.domain import a_label, domain_key, envelope_address


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("faß.example", "xn--fa-hia.example"),  # IDNA2003: fass.example, another domain
        ("Faß.EXAMPLE", "xn--fa-hia.example"),  # UTS #46 maps case
        ("bücher。example", "xn--bcher-kva.example"),  # and the ideographic full stop
        ("XN--bcher-kva.example", "xn--bcher-kva.example"),
        ("Example.COM", "example.com"),
        ("☃.example", None),  # symbols: IDNA2003 took them, IDNA2008 does not
        ("xn--zz.example", None),  # not a valid A-label
        ("-bücher.example", None),
    ],
)
def test_a_label(domain: str, expected: str | None) -> None:
    assert a_label(domain) == expected


def test_every_encoder_uses_idna2008() -> None:
    assert addr_spec("bob@faß.example") == ("bob@xn--fa-hia.example", False)
    assert addr_spec("jörg@faß.example") == ("jörg@xn--fa-hia.example", True)
    assert envelope_address("bob@faß.example") == "bob@xn--fa-hia.example"
    assert envelope_address("jörg@bücher.example") == "jörg@xn--bcher-kva.example"
    assert ascii_domain("faß.example") == "xn--fa-hia.example"
    assert ascii_domain("☃.example") is None
    assert domain_key("bob@Bücher.example") == domain_key("carol@xn--bcher-kva.EXAMPLE")
    assert domain_key("bob@faß.example") == "xn--fa-hia.example"


def test_dkim_domain_is_the_idna2008_a_label() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert DkimSigner("faß.example", "s1", pem, "ed25519-sha256").domain == "xn--fa-hia.example"
    with pytest.raises(ValueError, match="IDNA2008"):
        DkimSigner("☃.example", "s1", pem, "ed25519-sha256")


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("bob@bücher.example", True),
        ("bob@faß.example", True),
        ("jörg@bücher.example", True),
        ("bob@xn--bcher-kva.example", True),
        ("bob@☃.example", False),
        ("bob@xn--zz.example", False),
        ("bob@-bücher.example", False),
        ("bob@bücher", False),  # one label
        ("bob@" + "ü" * 60 + ".example", False),  # the A-label is over 63 octets
    ],
)
def test_accept_checks_domains_with_idna2008(address: str, valid: bool) -> None:
    assert is_valid_email(address) is valid


def test_idn_envelope_needs_no_smtputf8() -> None:
    proto = ClientProtocol("me.test")
    proto.receive_data(b"220 mx.test ESMTP\r\n")
    proto.data_to_send()
    proto.receive_data(b"250-mx.test\r\n250 PIPELINING\r\n")  # no SMTPUTF8
    proto.start_transaction("a@faß.example", ["bob@bücher.example"], b"Hi\r\n")
    sent = proto.data_to_send()
    assert sent.startswith(
        b"MAIL FROM:<a@xn--fa-hia.example>\r\nRCPT TO:<bob@xn--bcher-kva.example>"
    )


def test_routes_table_keys_are_a_labels() -> None:
    router = Router({"bücher.example": "127.0.0.1:2525", "xn--fa-hia.example.": "[::1]:26"}, [], 1)
    for domain, site in (
        ("xn--bcher-kva.example", "route:127.0.0.1:2525"),
        ("Bücher.example", "route:127.0.0.1:2525"),
        ("faß.example", "route:::1:26"),
    ):
        route = asyncio.run(router.route(domain))
        assert isinstance(route, Route) and route.site == site, domain
