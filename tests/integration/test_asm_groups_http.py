"""``asm`` on POST /v3/mail/send on a real node: a recipient unsubscribed from the mail's
group is dropped ("Unsubscribed Address") and never reaches the MX; the same address
without asm or with another group is delivered, and again once removed from the group; a
group the tenant lacks (or another tenant's) is a 400 naming the field."""

from __future__ import annotations

from typing import Any

from tests.conftest import call, simple_mail
from tests.integration.test_asm_groups import GROUPS, field_error, new_group, ok
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer


def test_http_drops_a_groups_unsubscribes(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    news, offers = new_group(node, key, "News"), new_group(node, key, "Offers")
    path = f"{GROUPS}/{news}/suppressions"
    ok(node, key, "POST", path, {"recipient_emails": ["Gone@Example.com"]})
    send(node, key, "gone@example.com", "bob@example.com", asm={"group_id": news})
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    (dropped,) = snap.of_type("dropped")
    assert dropped["email"] == "gone@example.com"
    assert (dropped["reason"], dropped["status"]) == ("Unsubscribed Address", "5.0.0")
    assert [t.rcpts for t in fake_mx.transactions] == [("bob@example.com",)]
    send(node, key, "gone@example.com")  # no asm: only the global lists count
    send(node, key, "gone@example.com", asm={"group_id": offers, "groups_to_display": [news]})
    wait_for(node, lambda s: len(s.of_type("delivered")) == 3)
    assert ok(node, key, "DELETE", f"{path}/gone@example.com") is None
    send(node, key, "gone@example.com", asm={"group_id": news})
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 4)
    assert len(snap.of_type("dropped")) == 1
    assert [t.rcpts for t in fake_mx.transactions][1:] == [("gone@example.com",)] * 3


def test_http_refuses_a_group_the_tenant_lacks(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    key, other = node.create_key(), node.create_key(tenant="other")
    mine, theirs = new_group(node, key, "Mine"), new_group(node, other, "Theirs")
    for asm, field in [
        ({"group_id": theirs}, "asm.group_id"),
        ({"group_id": mine, "groups_to_display": [mine, theirs]}, "asm.groups_to_display.1"),
    ]:
        r = call(node.http_port, "POST", "/v3/mail/send", simple_mail(asm=asm), key=key)
        assert field_error(r) == (400, field)
    shown = list(range(mine, mine + 26))  # 26 > 25: refused before any lookup
    r = call(
        node.http_port,
        "POST",
        "/v3/mail/send",
        simple_mail(asm={"group_id": mine, "groups_to_display": shown}),
        key=key,
    )
    assert field_error(r) == (400, "asm.groups_to_display")
    r = call(node.http_port, "POST", "/v3/mail/send", simple_mail(asm={"group_id": mine}), key=key)
    assert r.status == 202
