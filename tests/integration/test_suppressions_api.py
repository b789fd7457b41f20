"""The suppressions API over HTTP on a real node (tsg_suppressions_v3.json): lists with
their filters and pages, get/delete one and many, global unsubscribes, tenant isolation,
scopes, and the lists as delivery and accept see them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import call, spool_snapshot
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess

LISTS = ("bounces", "blocks", "invalid_emails", "spam_reports")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One accept-only node for the module; each test uses tenants of its own."""
    proc = NodeProcess(tmp_path_factory.mktemp("suppressions"), {"delivery": {"enabled": False}})
    proc.start()
    yield proc
    proc.stop()


def put(
    node: NodeProcess, tenant: str, list_name: str, email: str, created: float, **kw: str
) -> None:
    """An entry written straight into the node's spool (as delivery or inbound would)."""
    conn = sqlite3.connect(node.data_dir / "spool.db", timeout=10, isolation_level=None)
    try:
        conn.execute(
            "INSERT OR REPLACE INTO suppressions (tenant, email, list, created, reason, status)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, email.lower(), list_name, created, kw.get("reason", ""), kw.get("status", "")),
        )
    finally:
        conn.close()


def get(node: NodeProcess, key: str, path: str) -> Any:
    r = call(node.http_port, "GET", path, key=key)
    assert r.status == 200, r.body
    return r.json()


def emails(node: NodeProcess, key: str, path: str) -> list[str]:
    return [e["email"] for e in get(node, key, path)]


def field_error(r: Any) -> tuple[int, str | None]:
    (err,) = r.json()["errors"]
    assert err["message"]
    return r.status, err["field"]


def test_each_list_in_its_own_shape(node: NodeProcess) -> None:
    key = node.create_key(tenant="shapes")
    put(node, "shapes", "bounces", "b@x.example", 1000.7, reason="550 5.1.1 gone", status="5.1.1")
    put(node, "shapes", "blocks", "k@x.example", 1001, reason="554 blocked", status="5.7.1")
    put(node, "shapes", "invalid_emails", "i@x.example", 1002, reason="Invalid")
    put(node, "shapes", "spam_reports", "s@x.example", 1003)
    put(node, "shapes", "unsubscribes", "u@x.example", 1004)
    base = "/v3/suppression"
    assert get(node, key, f"{base}/bounces") == [
        {"created": 1000, "email": "b@x.example", "reason": "550 5.1.1 gone", "status": "5.1.1"}
    ]
    assert get(node, key, f"{base}/blocks") == [
        {"created": 1001, "email": "k@x.example", "reason": "554 blocked", "status": "5.7.1"}
    ]
    assert get(node, key, f"{base}/invalid_emails") == [
        {"created": 1002, "email": "i@x.example", "reason": "Invalid"}
    ]
    assert get(node, key, f"{base}/spam_reports") == [
        {"created": 1003, "email": "s@x.example", "ip": ""}
    ]
    assert get(node, key, f"{base}/unsubscribes") == [{"created": 1004, "email": "u@x.example"}]
    assert get(node, key, f"{base}/spam_reports/S%40X.example") == [
        {"created": 1003, "email": "s@x.example", "ip": ""}
    ]
    assert get(node, key, f"{base}/blocks/nobody%40x.example") == []  # no 404 in the OAI


def test_pages_time_window_and_email_filter(node: NodeProcess) -> None:
    key = node.create_key(tenant="pages")
    for i in range(7):
        put(node, "pages", "blocks", f"user{i}@x.example", 2000 + i)
    base = "/v3/suppression/blocks"
    pages = [emails(node, key, f"{base}?limit=3&offset={o}") for o in (0, 3, 6, 9)]
    assert pages == [
        ["user6@x.example", "user5@x.example", "user4@x.example"],
        ["user3@x.example", "user2@x.example", "user1@x.example"],
        ["user0@x.example"],
        [],
    ]
    assert emails(node, key, f"{base}?offset={10**30}&start_time={-(10**30)}") == []
    window = emails(node, key, f"{base}?start_time=2002&end_time=2004")  # both inclusive
    assert window == ["user4@x.example", "user3@x.example", "user2@x.example"]
    assert emails(node, key, f"{base}?start_time=2005") == ["user6@x.example", "user5@x.example"]
    put(node, "pages", "blocks", "sales.team@market.example", 1500)
    put(node, "pages", "blocks", "SALES_1@y.example", 1400)
    assert emails(node, key, f"{base}?email=sales") == [
        "sales.team@market.example",
        "sales_1@y.example",
    ]
    assert emails(node, key, f"{base}?email=sales_") == ["sales_1@y.example"]  # "_" is literal
    assert emails(node, key, f"{base}?email=%25market") == ["sales.team@market.example"]
    assert emails(node, key, f"{base}?email=user3%40x") == ["user3@x.example"]
    assert emails(node, key, f"{base}?email=%25team%25example&limit=1") == [
        "sales.team@market.example"
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("start_time=yesterday", "start_time"),
        ("end_time=1.5", "end_time"),
    ],
)
def test_bad_query_parameter_is_400_naming_it(node: NodeProcess, query: str, field: str) -> None:
    key = node.create_key(tenant="params")
    r = call(node.http_port, "GET", f"/v3/suppression/bounces?{query}", key=key)
    assert field_error(r) == (400, field)


def test_delete_one_many_and_all(node: NodeProcess) -> None:
    key = node.create_key(tenant="deletes")
    for name in ("bounces", "spam_reports"):
        for who in ("a", "b", "c", "d"):
            put(node, "deletes", name, f"{who}@x.example", 3000)
    base = "/v3/suppression/bounces"
    r = call(node.http_port, "DELETE", f"{base}/A%40x.example", key=key)
    assert (r.status, r.body) == (204, b"")
    assert get(node, key, f"{base}/a%40x.example") == []
    r = call(node.http_port, "DELETE", f"{base}/nobody%40x.example", key=key)
    assert r.status == 204  # the OAI names no 404
    r = call(node.http_port, "DELETE", base, {"emails": ["b@x.example", "C@X.EXAMPLE"]}, key=key)
    assert r.status == 204
    assert emails(node, key, base) == ["d@x.example"]
    r = call(node.http_port, "DELETE", base, {"delete_all": True}, key=key)
    assert r.status == 204
    assert emails(node, key, base) == []
    assert len(emails(node, key, "/v3/suppression/spam_reports")) == 4  # another list: kept


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delete_all": True, "emails": ["a@x.example"]}, "delete_all"),
        ({}, "emails"),
        ({"delete_all": False}, "emails"),
        ({"delete_all": "yes"}, "delete_all"),
        ({"emails": "a@x.example"}, "emails"),
        (b"", None),
        (b"{nope", None),
    ],
)
def test_bad_delete_body_is_400(node: NodeProcess, body: Any, field: str | None) -> None:
    key = node.create_key(tenant="badbody")
    put(node, "badbody", "invalid_emails", f"keep{len(str(body))}@x.example", 1)
    r = call(node.http_port, "DELETE", "/v3/suppression/invalid_emails", body, key=key)
    assert field_error(r) == (400, field)
    assert emails(node, key, "/v3/suppression/invalid_emails")  # nothing deleted


def test_global_unsubscribes(node: NodeProcess) -> None:
    key = node.create_key(tenant="global")
    base = "/v3/asm/suppressions/global"
    added = ["Un1@x.example", "un2@x.example"]
    r = call(node.http_port, "POST", base, {"recipient_emails": added}, key=key)
    assert r.status == 201 and r.json() == {"recipient_emails": added}
    assert get(node, key, f"{base}/un1%40x.example") == {"recipient_email": "un1@x.example"}
    assert get(node, key, f"{base}/other%40x.example") == {}
    listed = get(node, key, "/v3/suppression/unsubscribes")
    assert sorted(e["email"] for e in listed) == ["un1@x.example", "un2@x.example"]
    assert all(abs(e["created"] - time.time()) < 600 for e in listed)
    # Honoured by accept: a send to it is dropped with SendGrid's reason.
    mail = {
        "personalizations": [{"to": [{"email": "UN2@x.example"}]}],
        "from": {"email": "alice@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    assert call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status == 202
    dropped = spool_snapshot(node.data_dir).of_type("dropped")
    assert [
        (e["email"], e["reason"]) for e in dropped if e["email"].lower() == "un2@x.example"
    ] == [("UN2@x.example", "Unsubscribed Address")]
    r = call(node.http_port, "DELETE", f"{base}/un1%40x.example", key=key)
    assert r.status == 204
    assert get(node, key, f"{base}/un1%40x.example") == {}
    bad = {"recipient_emails": ["ok@x.example", "not an address"]}
    assert field_error(call(node.http_port, "POST", base, bad, key=key)) == (
        400,
        "recipient_emails.1",
    )
    r = call(node.http_port, "POST", base, {"emails": []}, key=key)
    assert field_error(r) == (400, "recipient_emails")
    assert emails(node, key, "/v3/suppression/unsubscribes") == ["un2@x.example"]


def test_a_tenant_never_sees_or_deletes_another_tenants_entries(node: NodeProcess) -> None:
    key_a, key_b = node.create_key(tenant="tenant-a"), node.create_key(tenant="tenant-b")
    for name in (*LISTS, "unsubscribes"):
        put(node, "tenant-b", name, "secret@b.example", 4000, reason="r", status="5.1.1")
    port = node.http_port
    for name in LISTS:
        base = f"/v3/suppression/{name}"
        assert get(node, key_a, base) == []
        assert get(node, key_a, f"{base}/secret%40b.example") == []
        assert call(port, "DELETE", f"{base}/secret%40b.example", key=key_a).status == 204
        assert call(port, "DELETE", base, {"delete_all": True}, key=key_a).status == 204
        assert call(port, "DELETE", base, {"emails": ["secret@b.example"]}, key=key_a).status == 204
    glob = "/v3/asm/suppressions/global/secret%40b.example"
    assert get(node, key_a, "/v3/suppression/unsubscribes") == []
    assert get(node, key_a, glob) == {}
    assert call(port, "DELETE", glob, key=key_a).status == 204
    for name in (*LISTS, "unsubscribes"):  # all still there for their own tenant
        assert emails(node, key_b, f"/v3/suppression/{name}") == ["secret@b.example"]
    assert get(node, key_b, glob) == {"recipient_email": "secret@b.example"}


def test_scopes(node: NodeProcess) -> None:
    port = node.http_port
    reader = node.create_key(tenant="scoped", scopes="suppression.bounces.read")
    put(node, "scoped", "bounces", "x@x.example", 5000)
    assert get(node, reader, "/v3/suppression/bounces") != []
    assert get(node, reader, "/v3/suppression/bounces/x%40x.example") != []
    forbidden = [
        ("DELETE", "/v3/suppression/bounces", {"delete_all": True}),
        ("DELETE", "/v3/suppression/bounces/x%40x.example", None),
        ("GET", "/v3/suppression/blocks", None),
        ("GET", "/v3/suppression/unsubscribes", None),
        ("POST", "/v3/asm/suppressions/global", {"recipient_emails": ["y@x.example"]}),
        ("GET", "/v3/asm/suppressions/global/x%40x.example", None),
        ("DELETE", "/v3/asm/suppressions/global/x%40x.example", None),
    ]
    for method, path, body in forbidden:
        r = call(port, method, path, body, key=reader)
        assert r.status == 403, (method, path)
        assert field_error(r) == (403, None)
    assert get(node, reader, "/v3/suppression/bounces") != []  # nothing was deleted
    everything = node.create_key(tenant="scoped", scopes="suppression.*,asm.suppressions.global.*")
    for method, path, body in forbidden:
        assert call(port, method, path, body, key=everything).status in (200, 201, 204)


def test_router_answers_for_unknown_paths_and_methods(node: NodeProcess) -> None:
    key = node.create_key(tenant="router")
    port = node.http_port
    assert call(port, "GET", "/v3/suppression/nope", key=key).status == 404
    assert call(port, "GET", "/v3/suppression/bounces/a%40b.c/x", key=key).status == 404
    assert call(port, "POST", "/v3/suppression/bounces", {}, key=key).status == 405
    assert call(port, "PUT", "/v3/suppression/bounces/a%40b.c", {}, key=key).status == 405
    assert call(port, "DELETE", "/v3/suppression/unsubscribes", {}, key=key).status == 405
    assert call(port, "GET", "/v3/suppression/bounces/a%40b.c").status == 401


def test_hard_bounce_listed_then_deleted_then_delivered(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key(tenant="bouncer")
    send(node, key, "550-gone@example.com")
    wait_for(node, lambda s: bool(s.of_type("bounce")))
    (entry,) = get(node, key, "/v3/suppression/bounces")
    assert entry["email"] == "550-gone@example.com"
    assert entry["status"].startswith("5.1.") and entry["reason"].startswith("550")
    assert abs(entry["created"] - time.time()) < 600
    r = call(node.http_port, "DELETE", "/v3/suppression/bounces/550-gone%40example.com", key=key)
    assert r.status == 204
    # No longer suppressed: the next send reaches the destination again (and bounces again).
    send(node, key, "550-gone@example.com")
    snap = wait_for(node, lambda s: len(s.of_type("bounce")) == 2)
    assert len(snap.of_type("bounce")) == 2 and not snap.of_type("dropped")
