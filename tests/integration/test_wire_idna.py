"""Internationalized domains on the wire: A-labels (IDNA2008 + UTS #46) in envelope and headers.

A real node resolves through a DNS server on loopback and delivers to the fake destination,
which offers no SMTPUTF8 unless a test asks: an internationalized *domain* must not need it
(only a non-ASCII local part does), and ``faß`` is ``xn--fa-hia``, not IDNA2003's ``fass``.
"""

from __future__ import annotations

from email import message_from_bytes
from typing import Any

from tests.conftest import call, simple_mail
from tests.integration.test_delivery import fast_config, wait_for
from tests.integration.test_delivery_routing import mx_node, settled

from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread

BUCHER = "xn--bcher-kva.example"


def post(node: Any, key: str, mail: dict[str, Any]) -> None:
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202, r.body


def test_idn_delivered_without_smtputf8_as_one_destination(
    node_factory: Any, dns_server: FakeDnsServer, fake_mx: FakeSmtpServer
) -> None:
    assert not fake_mx.smtputf8
    dns_server.add_mx(BUCHER, [(10, "mx1.mx.test")])
    dns_server.add_a("mx1.mx.test", "127.0.0.1")
    node = mx_node(node_factory, dns_server, fake_mx)
    key = node.create_key()
    mail = simple_mail(**{"from": {"email": "alice@faß.example", "name": "Alice"}})
    mail["personalizations"] = [
        {"to": [{"email": "bob@bücher.example"}, {"email": f"carol@{BUCHER}"}]}
    ]
    post(node, key, mail)
    snap = settled(node, lambda s: len(s.of_type("delivered")) == 2)
    assert len(snap.of_type("delivered")) == 2, node.log_tail()
    assert snap.of_type("bounce") == [] and snap.queued == 0
    # Both spellings name one destination: one queue, one job, one transaction.
    (tx,) = fake_mx.transactions
    assert sorted(tx.rcpts) == [f"bob@{BUCHER}", f"carol@{BUCHER}"]
    assert tx.mail_from.isascii()  # the From address or a VERP address on its domain
    assert "SMTPUTF8" not in tx.params
    assert tx.data.isascii()
    msg = message_from_bytes(tx.data)
    assert msg["To"] == f"bob@{BUCHER}, carol@{BUCHER}"
    assert msg["From"] == "Alice <alice@xn--fa-hia.example>"  # IDNA2003: fass.example
    assert dns_server.query_count(BUCHER, "MX") >= 1
    # The events keep the address as the user wrote it.
    assert sorted(e["email"] for e in snap.of_type("delivered")) == [
        "bob@bücher.example",
        f"carol@{BUCHER}",
    ]


def test_non_ascii_local_part_still_needs_smtputf8(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    post(node, key, simple_mail(to="jörg@bücher.example"))
    snap = wait_for(node, lambda s: bool(s.of_type("bounce")))
    (bounce,) = snap.of_type("bounce")
    assert bounce["type"] == "blocked" and "SMTPUTF8" in bounce["reason"], bounce
    assert fake_mx.transactions == []


def test_non_ascii_local_part_with_smtputf8_gets_a_label_domain(node_factory: Any) -> None:
    with running_in_thread(FakeSmtpServer(smtputf8=True)) as server:
        node = node_factory(fast_config(server.port)).start()
        key = node.create_key()
        post(node, key, simple_mail(to="jörg@bücher.example"))
        snap = wait_for(node, lambda s: bool(s.of_type("delivered")))
        assert len(snap.of_type("delivered")) == 1, node.log_tail()
        (tx,) = server.transactions
    assert tx.rcpts == (f"jörg@{BUCHER}",)
    assert "SMTPUTF8" in tx.params
    assert f"To: jörg@{BUCHER}\r\n".encode() in tx.data


def test_domains_idna2008_refuses_are_a_400_naming_the_field(accept_node: Any) -> None:
    key = accept_node.create_key()
    mail = simple_mail(to="bob@☃.example", **{"from": {"email": "alice@xn--zz.example"}})
    mail["personalizations"][0]["cc"] = [{"email": "carol@-bücher.example"}]
    r = call(accept_node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 400, r.body
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"from.email", "personalizations.0.to.0.email", "personalizations.0.cc.0.email"} <= (
        fields
    ), r.body


def test_both_spellings_of_an_idn_address_are_one_suppression(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """A hard bounce of ``550-bob@bücher.example`` suppresses ``550-bob@xn--bcher-kva...``
    too (and the other way round would as well): one address, one list entry."""
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    post(node, key, simple_mail("550-bob@bücher.example"))
    wait_for(node, lambda s: len(s.of_type("bounce")) == 1)
    post(node, key, simple_mail(f"550-BOB@{BUCHER.upper()}"))
    snap = wait_for(node, lambda s: len(s.of_type("dropped")) == 1)
    (dropped,) = snap.of_type("dropped")
    assert dropped["reason"] == "Bounced Address"
    assert len(fake_mx.transactions) == 0 and fake_mx.replies[550] == 1


def test_both_spellings_in_one_personalization_are_a_duplicate(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    mail = simple_mail("bob@bücher.example")
    mail["personalizations"][0]["cc"] = [{"email": f"Bob@{BUCHER}"}]
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.create_key())
    assert r.status == 400
    assert "duplicate" in r.json()["errors"][0]["message"]
