"""End to end: a node with ``delivery.dkim`` signs what it sends; dkimpy verifies it.

The node signs with an RSA-2048 key from a PEM file; the public key is published as a TXT
record on the loopback DNS server, and dkimpy fetches it from there to verify the message
exactly as the fake destination MTA received it.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.integration.test_delivery import fast_config, send, wait_for
from tests.integration.test_dkim import txt_lookup

from postline.deliver.dkim import DkimSigner
from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer


def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def received_from(fake: FakeSmtpServer, sender: str) -> bytes:
    """The message whose From is ``sender`` (the envelope sender is its VERP address)."""
    (data,) = [t.data for t in fake.transactions if _from_header(t.data) == sender]
    return data


def _from_header(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return str(msg["From"].addresses[0].addr_spec)


def signing_config(port: int, dns_server: FakeDnsServer, tmp_path: Path) -> dict[str, Any]:
    """A node config signing for example.com (selector sel), its key published in DNS."""
    pem = rsa_pem()
    key_file = tmp_path / "example.com.pem"
    key_file.write_bytes(pem)
    dns_server.add_txt(
        "sel._domainkey.example.com", DkimSigner("example.com", "sel", pem).txt_record()
    )
    cfg = fast_config(port)
    cfg["delivery"]["dkim"] = {"example.com": {"selector": "sel", "private_key": str(key_file)}}
    return cfg


def test_signed_mail_verifies_at_the_destination(
    node_factory: Any, fake_mx: FakeSmtpServer, dns_server: FakeDnsServer, tmp_path: Path
) -> None:
    cfg = signing_config(fake_mx.port, dns_server, tmp_path)
    node = node_factory(cfg).start()
    key = node.create_key()

    send(node, key, "bob@example.org")  # from alice@example.com: signed
    send(node, key, "carol@example.org", **{"from": {"email": "news@news.example.com"}})
    send(node, key, "dave@example.org", **{"from": {"email": "eve@other.test"}})  # no key
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 3)
    assert len(snap.of_type("delivered")) == 3, node.log_tail()

    dnsfunc = txt_lookup(dns_server)
    signed = received_from(fake_mx, "alice@example.com")
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    tags = re.sub(rb"\s", b"", signed.split(b"\r\n\r\n", 1)[0])
    assert b"d=example.com;" in tags and b"s=sel;" in tags
    assert b"Hi Bob" in signed
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert dns_server.query_count("sel._domainkey.example.com", "TXT") >= 1

    # A subdomain without its own key signs with its parent's (d=example.com).
    sub = received_from(fake_mx, "news@news.example.com")
    assert sub.startswith(b"DKIM-Signature:") and dkim.verify(sub, dnsfunc=dnsfunc)

    # The check is real: a changed body no longer verifies.
    assert not dkim.verify(signed.replace(b"Hi Bob", b"Hi Rob"), dnsfunc=dnsfunc)

    unsigned = received_from(fake_mx, "eve@other.test")
    assert b"DKIM-Signature" not in unsigned.split(b"\r\n\r\n", 1)[0]


def test_relayed_mail_is_signed_for_its_from_domain(
    node_factory: Any, fake_mx: FakeSmtpServer, dns_server: FakeDnsServer, tmp_path: Path
) -> None:
    """A message relayed over SMTP is signed as received (plus Received) for the domain of
    its From header, whatever the client's envelope sender; dkimpy verifies it."""
    import smtplib

    cfg = signing_config(fake_mx.port, dns_server, tmp_path)
    cfg["smtp"] = {"listen": "127.0.0.1:0", "trusted_networks": ["127.0.0.0/8"]}
    node = node_factory(cfg).start()
    raw = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: relayed\r\n"
        b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <r1@example.com>\r\n\r\n"
        b"Hi Bob, over SMTP\r\n"
    )
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        smtp.sendmail("bounces@mailer.other.test", ["bob@example.org"], raw)
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert len(snap.of_type("delivered")) == 1, node.log_tail()
    (got,) = [t.data for t in fake_mx.transactions]
    assert got.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert got.endswith(raw)
    tags = re.sub(rb"\s", b"", got.split(b"\r\n\r\n", 1)[0])
    assert b"d=example.com;" in tags
    assert dkim.verify(got, dnsfunc=txt_lookup(dns_server))
