"""DKIM: our signatures verified by dkimpy, the key fetched from the loopback DNS server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postline.config import ConfigError, DkimKey
from postline.deliver.dkim import DkimSigner, relaxed_body, signer_for
from postline.deliver.render import render
from postline.model.mail import Content, EmailAddress, MailBody, Personalization
from postline.testing.dns_server import FakeDnsServer

ALGORITHMS = ["rsa-sha256", "ed25519-sha256"]


def pem(algorithm: str) -> bytes:
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {algorithm: pem(algorithm) for algorithm in ALGORITHMS}


def txt_lookup(server: FakeDnsServer) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc``: a real TXT query to the loopback server."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        response = dns.query.udp(query, server.host, port=server.port, timeout=2)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    return dnsfunc


def message() -> bytes:
    body = MailBody(
        from_=EmailAddress("news@example.com", "Exämple News"),
        subject="Ünïcode subject,   with  spaces and a long line that is folded over two lines",
        content=[
            Content("text/plain", "Hello   there\t \nline two  \n\n\n"),
            Content("text/html", "<p>Hello</p>"),
        ],
        headers={"List-Unsubscribe": "<mailto:unsub@example.com>", "X-Campaign": "c1"},
    )
    pers = Personalization(
        to=[EmailAddress("bob@example.org", "Bob")], cc=[EmailAddress("carol@example.org")]
    )
    return render(body, pers, message_id="m1@pl1", date=1_700_000_000).data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dkimpy_verifies_our_signature(
    algorithm: str, keys: dict[str, bytes], dns_server: FakeDnsServer
) -> None:
    signer = DkimSigner("example.com", "s1", keys[algorithm], algorithm)
    dns_server.add_txt("s1._domainkey.example.com", signer.txt_record())
    data = message()
    signed = signer.sign(data) + data
    assert dkim.verify(signed, dnsfunc=txt_lookup(dns_server))
    assert dns_server.query_count("s1._domainkey.example.com", "TXT") == 1
    field = signer.sign(data).decode()
    h_tag = re.search(r"h=([^;]*);", field)
    assert h_tag is not None
    assert re.sub(r"\s", "", h_tag.group(1)).split(":") == [
        "from", "from", "to", "to", "cc", "cc", "subject", "subject", "date", "date",
        "reply-to", "message-id", "message-id", "mime-version", "mime-version",
        "content-type", "content-type", "content-transfer-encoding", "list-unsubscribe",
    ]  # fmt: skip
    assert all(len(line) <= 78 for line in field.split("\r\n"))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_body_fails(
    algorithm: str, keys: dict[str, bytes], dns_server: FakeDnsServer
) -> None:
    signer = DkimSigner("example.com", "s1", keys[algorithm], algorithm)
    dns_server.add_txt("s1._domainkey.example.com", signer.txt_record())
    data = message()
    signed = signer.sign(data) + data.replace(b"Hello", b"Jello", 1)
    assert b"Jello" in signed
    assert not dkim.verify(signed, dnsfunc=txt_lookup(dns_server))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_added_from_breaks_oversigned_signature(
    algorithm: str, keys: dict[str, bytes], dns_server: FakeDnsServer
) -> None:
    signer = DkimSigner("example.com", "s1", keys[algorithm], algorithm)
    dns_server.add_txt("s1._domainkey.example.com", signer.txt_record())
    data = message()
    signed = signer.sign(data) + b"From: evil@example.net\r\n" + data
    assert not dkim.verify(signed, dnsfunc=txt_lookup(dns_server))


def test_relaxed_canonicalization_survives_refolding(
    keys: dict[str, bytes], dns_server: FakeDnsServer
) -> None:
    signer = DkimSigner("example.com", "s1", keys["ed25519-sha256"], "ed25519-sha256")
    dns_server.add_txt("s1._domainkey.example.com", signer.txt_record())
    data = message()
    signed = signer.sign(data) + data
    head, _, body = signed.partition(b"\r\n\r\n")
    relayed = head.replace(b"Subject: ", b"Subject:\t ") + b"\r\n\r\n" + body + b"\r\n\r\n"
    assert dkim.verify(relayed, dnsfunc=txt_lookup(dns_server))


def test_wrong_published_key_fails(keys: dict[str, bytes], dns_server: FakeDnsServer) -> None:
    signer = DkimSigner("example.com", "s1", keys["ed25519-sha256"], "ed25519-sha256")
    other = DkimSigner("example.com", "s1", pem("ed25519-sha256"), "ed25519-sha256")
    dns_server.add_txt("s1._domainkey.example.com", other.txt_record())
    data = message()
    assert not dkim.verify(signer.sign(data) + data, dnsfunc=txt_lookup(dns_server))


def test_relaxed_body_rules() -> None:
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"a  b\t c \t\r\n\r\n\r\n") == b"a b c\r\n"
    assert relaxed_body(b"no newline ") == b"no newline\r\n"


def test_signer_for_loads_keys_and_walks_up_to_parent(
    keys: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / "ed.pem").write_bytes(keys["ed25519-sha256"])
    lookup = signer_for(
        {
            "Example.COM": DkimKey(
                selector="s1", private_key=str(tmp_path / "ed.pem"), algorithm="ed25519-sha256"
            )
        }
    )
    signer = lookup("example.com")
    assert signer is not None and signer.selector == "s1"
    assert lookup("news.example.com") is signer
    assert lookup("example.org") is None


def test_signer_for_reports_bad_keys(keys: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"delivery\.dkim\.example\.com\.private_key"):
        signer_for({"example.com": DkimKey(selector="s", private_key=str(tmp_path / "none"))})
    (tmp_path / "ed.pem").write_bytes(keys["ed25519-sha256"])
    with pytest.raises(ConfigError, match="does not fit rsa-sha256"):
        signer_for({"example.com": DkimKey(selector="s", private_key=str(tmp_path / "ed.pem"))})
