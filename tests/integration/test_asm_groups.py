"""Unsubscribe groups over HTTP on a real node (tsg_suppressions_v3.json, ASM paths): the
groups and their members in SendGrid's shapes, bounds, tenants, and what the relay does
with a group's unsubscribes (dropped, "Unsubscribed Address"; nothing reaches the MX)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import call
from tests.integration.test_delivery import wait_for
from tests.integration.test_smtp_relay import client, message, relay_config

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess

GROUPS = "/v3/asm/groups"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One accept-only node for the module; each test uses tenants of its own."""
    proc = NodeProcess(tmp_path_factory.mktemp("asm"), {"delivery": {"enabled": False}})
    proc.start()
    yield proc
    proc.stop()


def ok(node: NodeProcess, key: str, method: str, path: str, body: Any = None) -> Any:
    r = call(node.http_port, method, path, body, key=key)
    assert r.status in (200, 201, 204), (r.status, r.body)
    return r.json() if r.status != 204 else None


def field_error(r: Any) -> tuple[int, str | None]:
    (err,) = r.json()["errors"]
    assert err["message"]
    return r.status, err["field"]


def new_group(node: NodeProcess, key: str, name: str, **kw: Any) -> int:
    body = {"name": name, "description": kw.pop("description", f"about {name}"), **kw}
    made = ok(node, key, "POST", GROUPS, body)
    return int(made["id"])


def test_group_crud_in_sendgrids_shapes(node: NodeProcess) -> None:
    key = node.create_key(tenant="crud")
    body = {"name": "Product Suggestions", "description": "Things you may like", "is_default": True}
    made = ok(node, key, "POST", GROUPS, body)
    assert set(made) == {"id", "name", "description", "is_default"}  # the 201's schema
    assert made["name"] == "Product Suggestions" and made["is_default"] is True
    gid = made["id"]
    other = new_group(node, key, "Newsletters", is_default=True)  # the new default
    one = ok(node, key, "GET", f"{GROUPS}/{gid}")
    assert one == {**made, "is_default": False, "unsubscribes": 0}
    ok(node, key, "POST", f"{GROUPS}/{gid}/suppressions", {"recipient_emails": ["A@x.example"]})
    listed = ok(node, key, "GET", GROUPS)
    assert [(g["id"], g["unsubscribes"], g["is_default"]) for g in listed] == [
        (gid, 1, False),
        (other, 0, True),
    ]
    assert [g["id"] for g in ok(node, key, "GET", f"{GROUPS}?id={other}")] == [other]
    patched = ok(node, key, "PATCH", f"{GROUPS}/{gid}", {"id": 5, "name": "Item Suggestions"})
    assert patched["name"] == "Item Suggestions" and patched["description"] == body["description"]
    assert patched["id"] == gid
    assert ok(node, key, "DELETE", f"{GROUPS}/{gid}") is None
    assert call(node.http_port, "GET", f"{GROUPS}/{gid}", key=key).status == 404
    assert call(node.http_port, "DELETE", f"{GROUPS}/{gid}", key=key).status == 404
    assert [g["id"] for g in ok(node, key, "GET", GROUPS)] == [other]


def test_members_search_and_the_asm_suppressions_views(node: NodeProcess) -> None:
    key = node.create_key(tenant="members")
    weekly, daily = new_group(node, key, "Weekly"), new_group(node, key, "Daily")
    added = ok(
        node,
        key,
        "POST",
        f"{GROUPS}/{weekly}/suppressions",
        {"recipient_emails": ["B@x.example", "a@x.example"]},
    )
    assert added == {"recipient_emails": ["B@x.example", "a@x.example"]}  # echoed
    ok(node, key, "POST", f"{GROUPS}/{daily}/suppressions", {"recipient_emails": ["a@x.example"]})
    assert ok(node, key, "GET", f"{GROUPS}/{weekly}/suppressions") == [
        "a@x.example",
        "b@x.example",
    ]
    assert ok(node, key, "GET", f"{GROUPS}/{weekly}/suppressions?limit=1&offset=1") == [
        "b@x.example"
    ]
    found = ok(
        node,
        key,
        "POST",
        f"{GROUPS}/{daily}/suppressions/search",
        {"recipient_emails": ["a@x.example", "b@x.example"]},
    )
    assert found == ["a@x.example"]
    every = ok(node, key, "GET", "/v3/asm/suppressions")
    assert [(e["email"], e["group_id"], e["group_name"]) for e in every] == [
        ("a@x.example", weekly, "Weekly"),
        ("b@x.example", weekly, "Weekly"),
        ("a@x.example", daily, "Daily"),
    ]
    assert all(isinstance(e["created_at"], int) for e in every)
    b = ok(node, key, "GET", "/v3/asm/suppressions/b@x.example")["suppressions"]
    assert [(g["id"], g["name"], g["suppressed"]) for g in b] == [
        (weekly, "Weekly", True),
        (daily, "Daily", False),
    ]
    assert set(b[0]) == {"id", "name", "description", "is_default", "suppressed"}
    assert ok(node, key, "DELETE", f"{GROUPS}/{weekly}/suppressions/A%40x.example") is None
    assert ok(node, key, "GET", f"{GROUPS}/{weekly}/suppressions") == ["b@x.example"]
    ok(node, key, "DELETE", f"{GROUPS}/{weekly}")  # its members go with it
    assert [e["group_id"] for e in ok(node, key, "GET", "/v3/asm/suppressions")] == [daily]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "no name"}, "name"),
        ({"name": "", "description": "d"}, "name"),
        ({"name": "n" * 31, "description": "d"}, "name"),
        ({"name": "n", "description": "d" * 101}, "description"),
        ({"name": 5, "description": "d"}, "name"),
    ],
)
def test_bad_group_body_is_400_naming_the_field(node: NodeProcess, body: Any, field: str) -> None:
    key = node.create_key(tenant="badbody")
    r = call(node.http_port, "POST", GROUPS, body, key=key)
    assert field_error(r) == (400, field)


def test_bounds_at_the_limit(node: NodeProcess) -> None:
    key = node.create_key(tenant="bounds")
    gid = new_group(node, key, "n" * 30, description="d" * 100)  # exactly the maximum
    r = call(node.http_port, "POST", GROUPS, {"name": "n" * 30, "description": ""}, key=key)
    assert field_error(r) == (400, "name")  # names are unique per tenant
    emails = [f"u{i}@x.example" for i in range(1000)]
    path = f"{GROUPS}/{gid}/suppressions"
    assert ok(node, key, "POST", path, {"recipient_emails": emails})["recipient_emails"] == emails
    r = call(node.http_port, "POST", path, {"recipient_emails": [*emails, "x@x.example"]}, key=key)
    assert field_error(r) == (400, "recipient_emails")
    r = call(node.http_port, "POST", path, {"recipient_emails": ["not an address"]}, key=key)
    assert field_error(r) == (400, "recipient_emails.0")
    assert len(ok(node, key, "GET", path)) == 1000
    for i in range(199):
        new_group(node, key, f"g{i}")
    assert len(ok(node, key, "GET", GROUPS)) == 200
    r = call(node.http_port, "POST", GROUPS, {"name": "one more", "description": ""}, key=key)
    assert r.status == 400 and "200" in r.json()["errors"][0]["message"]
    ids = "&".join(f"id={i}" for i in range(201))
    assert field_error(call(node.http_port, "GET", f"{GROUPS}?{ids}", key=key)) == (400, "id")
    r = call(node.http_port, "GET", f"{GROUPS}/{gid}/suppressions?limit=10001", key=key)
    assert field_error(r) == (400, "limit")


def test_a_tenant_never_sees_or_changes_another_tenants_groups(node: NodeProcess) -> None:
    mine, theirs = node.create_key(tenant="t-one"), node.create_key(tenant="t-two")
    gid = new_group(node, mine, "Mine")
    ok(node, mine, "POST", f"{GROUPS}/{gid}/suppressions", {"recipient_emails": ["a@x.example"]})
    new_group(node, theirs, "Mine")  # the same name in another tenant is fine
    one, members = f"{GROUPS}/{gid}", f"{GROUPS}/{gid}/suppressions"
    for method, path, body in [
        ("GET", one, None),
        ("PATCH", one, {"name": "Stolen"}),
        ("DELETE", one, None),
        ("GET", members, None),
        ("POST", members, {"recipient_emails": ["b@x.example"]}),
        ("POST", members + "/search", {"recipient_emails": ["a@x.example"]}),
        ("DELETE", members + "/a@x.example", None),
    ]:
        assert call(node.http_port, method, path, body, key=theirs).status == 404, (method, path)
    assert [g["name"] for g in ok(node, theirs, "GET", GROUPS)] == ["Mine"]
    assert ok(node, theirs, "GET", f"{GROUPS}?id={gid}") == []
    assert ok(node, theirs, "GET", "/v3/asm/suppressions") == []
    assert ok(node, theirs, "GET", "/v3/asm/suppressions/a@x.example") == {
        "suppressions": [
            {**g, "suppressed": False}
            for g in (
                {k: v for k, v in x.items() if k != "unsubscribes"}
                for x in ok(node, theirs, "GET", GROUPS)
            )
        ]
    }
    assert ok(node, mine, "GET", members) == ["a@x.example"]  # untouched
    assert ok(node, mine, "GET", one)["name"] == "Mine"
    assert call(node.http_port, "GET", f"{GROUPS}/abc", key=mine).status == 404


def test_scopes(node: NodeProcess) -> None:
    reader = node.create_key(tenant="scoped", scopes="asm.groups.read")
    writer = node.create_key(tenant="scoped", scopes="asm.groups.*")
    gid = new_group(node, writer, "Scoped")
    assert call(node.http_port, "GET", GROUPS, key=reader).status == 200
    for method, path, body in [
        ("POST", GROUPS, {"name": "x", "description": ""}),
        ("PATCH", f"{GROUPS}/{gid}", {"name": "y"}),
        ("DELETE", f"{GROUPS}/{gid}", None),
    ]:
        assert call(node.http_port, method, path, body, key=reader).status == 403
    sender = node.create_key(tenant="scoped", scopes="mail.send")
    assert call(node.http_port, "GET", GROUPS, key=sender).status == 403
    assert call(node.http_port, "GET", "/v3/asm/suppressions", key=sender).status == 403


def test_relay_drops_a_groups_unsubscribes(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """Through the relay: a member of the message's group is dropped with SendGrid's
    reason and never reaches the MX; the same address without a group, or with another
    group, is delivered; once removed from the group it is delivered again."""
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    news, offers = new_group(node, key, "News"), new_group(node, key, "Offers")
    path = f"{GROUPS}/{news}/suppressions"
    ok(node, key, "POST", path, {"recipient_emails": ["Gone@Example.com"]})

    def relay(group: int | None, *rcpts: str) -> None:
        headers = {} if group is None else {"X_SMTPAPI": f'{{"asm_group_id": {group}}}'}
        with client(node, key) as smtp:
            smtp.send_message(message(**headers), "ana@sender.example", list(rcpts))

    relay(news, "gone@example.com", "bob@example.com")
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    (dropped,) = snap.of_type("dropped")
    assert dropped["email"] == "gone@example.com"
    assert (dropped["reason"], dropped["status"]) == ("Unsubscribed Address", "5.0.0")
    assert [t.rcpts for t in fake_mx.transactions] == [("bob@example.com",)]
    relay(None, "gone@example.com")  # no group: only the global lists count
    relay(offers, "gone@example.com")  # another group
    wait_for(node, lambda s: len(s.of_type("delivered")) == 3)
    assert ok(node, key, "DELETE", f"{path}/gone@example.com") is None
    relay(news, "gone@example.com")
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 4)
    assert len(snap.of_type("dropped")) == 1
    assert [t.rcpts for t in fake_mx.transactions][1:] == [("gone@example.com",)] * 3


def test_relay_refuses_a_group_the_tenant_lacks(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key, other = node.create_key(), node.create_key(tenant="other")
    theirs = new_group(node, other, "Theirs")
    mine = new_group(node, key, "Mine")
    for api, named in [
        (f'{{"asm_group_id": {theirs}}}', "asm_group_id"),
        (f'{{"asm_group_id": {mine}, "asm_groups_to_display": [{mine}, 999]}}', "display"),
    ]:
        with client(node, key) as smtp, pytest.raises(Exception) as refused:
            smtp.send_message(message(X_SMTPAPI=api), "ana@sender.example", ["bob@example.com"])
        assert "550" in str(refused.value) and named in str(refused.value)
    snap = wait_for(node, lambda s: False, timeout=0)
    assert snap.events == [] and snap.messages == 0
