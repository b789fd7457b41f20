"""The DKIM header set: oversigned fields, so that a field prepended later breaks the signature.

RFC 6376 §5.4.2: a name listed in ``h=`` once more than the field appears stands for a null
field; a verifier then hashes any instance added above the signed ones, and fails. Without
it a prepended ``Subject`` or ``To`` is what mail clients show, and the signature still
verifies. dkimpy verifies, fetching the key from a real DNS server on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.conftest import call, simple_mail
from tests.integration.test_delivery import fast_config, wait_for
from tests.integration.test_delivery_dkim import rsa_pem
from tests.integration.test_dkim import txt_lookup

from postline.deliver.dkim import OVERSIGNED, DkimSigner
from postline.deliver.render import render
from postline.model.mail import Content, EmailAddress, MailBody, Personalization
from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer

SELECTOR = "sel._domainkey.example.com"


def h_tag(signed: bytes) -> list[str]:
    head = signed.split(b"\r\n\r\n", 1)[0].decode()
    found = re.search(r"\bh=([^;]*);", re.sub(r"\s", "", head))
    assert found is not None
    return found.group(1).split(":")


def prepend(signed: bytes, field: str) -> bytes:
    """``field`` above every other field, the DKIM-Signature included (as a forger would)."""
    return field.encode() + b"\r\n" + signed


def test_prepended_fields_break_the_signature_at_the_destination(
    node_factory: Any, fake_mx: FakeSmtpServer, dns_server: FakeDnsServer, tmp_path: Path
) -> None:
    pem = rsa_pem()
    (tmp_path / "key.pem").write_bytes(pem)
    dns_server.add_txt(SELECTOR, DkimSigner("example.com", "sel", pem).txt_record())
    cfg = fast_config(fake_mx.port)
    cfg["delivery"]["dkim"] = {
        "example.com": {"selector": "sel", "private_key": str(tmp_path / "key.pem")}
    }
    node = node_factory(cfg).start()
    threading = {
        "In-Reply-To": "<a1@example.com>",
        "References": "<a0@example.com> <a1@example.com>",
    }
    mail = simple_mail(headers={**threading, "List-Unsubscribe": "<mailto:u@example.com>"})
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.create_key())
    assert r.status == 202, r.body
    snap = wait_for(node, lambda s: bool(s.of_type("delivered")))
    assert snap.of_type("delivered"), node.log_tail()
    (signed,) = [t.data for t in fake_mx.transactions]
    dnsfunc = txt_lookup(dns_server)
    assert dkim.verify(signed, dnsfunc=dnsfunc)

    names = h_tag(signed)
    assert names.count("subject") == 2 and names.count("to") == 2  # present once, +1
    assert names.count("cc") == 1 and names.count("reply-to") == 1  # absent, +1
    assert {"in-reply-to", "references", "list-unsubscribe"} <= set(names)
    assert "sender" not in names  # signed only when present: lists may add it

    for forged in (
        "Subject: Your invoice is overdue",
        "To: victim@example.net",
        "Cc: victim@example.net",
        "Reply-To: thief@example.net",
        "From: ceo@example.com",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
    ):
        assert not dkim.verify(prepend(signed, forged), dnsfunc=dnsfunc), forged
    changed = signed.replace(b"In-Reply-To: <a1@", b"In-Reply-To: <a2@", 1)
    assert changed != signed and not dkim.verify(changed, dnsfunc=dnsfunc)
    # What relays add (trace fields, their own X- fields) leaves the signature valid.
    assert dkim.verify(prepend(signed, "Received: from relay.example.net"), dnsfunc=dnsfunc)
    assert dkim.verify(prepend(signed, "X-Spam-Score: 0.1"), dnsfunc=dnsfunc)


def one_part_message() -> bytes:
    body = MailBody(
        from_=EmailAddress("news@example.com"),
        subject="Hello",
        content=[Content("text/plain", "Grüße\n")],  # one part: a top-level CTE
        reply_to=EmailAddress("help@example.com"),
    )
    pers = Personalization(to=[EmailAddress("bob@example.org")])
    return render(body, pers, message_id="m1@pl1", date=1_700_000_000).data


@pytest.fixture
def ed_signer(dns_server: FakeDnsServer) -> DkimSigner:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = DkimSigner("example.com", "sel", pem, "ed25519-sha256")
    dns_server.add_txt(SELECTOR, signer.txt_record())
    return signer


@pytest.mark.parametrize("name", OVERSIGNED)
def test_each_oversigned_field_prepended_fails(
    name: str, ed_signer: DkimSigner, dns_server: FakeDnsServer
) -> None:
    data = one_part_message()
    signed = ed_signer.sign(data) + data
    assert dkim.verify(signed, dnsfunc=txt_lookup(dns_server))
    present = sum(
        1
        for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")
        if line.lower().startswith(name.encode() + b":")
    )
    assert h_tag(signed).count(name) == present + 1
    forged = prepend(signed, f"{name}: forged")
    assert not dkim.verify(forged, dnsfunc=txt_lookup(dns_server))
