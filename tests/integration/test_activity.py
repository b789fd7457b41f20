"""Activity search end to end: a node delivers to the fake MX, GET /v3/messages finds it.

Every wait polls the API with a deadline; no assertion is about wall-clock time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from tests.conftest import Reply, call
from tests.integration.test_delivery import fast_config, send

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess

Messages = list[dict[str, Any]]


def search(node: NodeProcess, key: str, query: str | None, limit: int | None = None) -> Reply:
    params = []
    if query is not None:
        params.append("query=" + quote(query, safe=""))
    if limit is not None:
        params.append(f"limit={limit}")
    return call(node.http_port, "GET", "/v3/messages?" + "&".join(params), key=key)


def wait_messages(
    node: NodeProcess,
    key: str,
    query: str,
    done: Callable[[Messages], bool],
    timeout: float = 20,
) -> Messages:
    deadline = time.monotonic() + timeout
    while True:
        r = search(node, key, query, 1000)
        assert r.status == 200, r.body
        messages: Messages = r.json()["messages"]
        if done(messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)


def delivered(messages: Messages) -> bool:
    return bool(messages) and all(m["status"] == "delivered" for m in messages)


def test_search_by_to_email_msg_id_and_status(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    x_id = send(node, key, "Bob@Example.com", categories=["c1"], custom_args={"plan": "gold"})
    found = wait_messages(node, key, 'to_email="bob@example.com"', delivered)
    assert len(found) == 1, (found, node.log_tail())
    (msg,) = found
    assert msg["msg_id"].startswith(x_id + ".")
    assert msg["from_email"] == "alice@example.com" and msg["subject"] == "Hello"
    assert (msg["opens_count"], msg["clicks_count"]) == (0, 0)
    assert msg["last_event_time"].endswith("Z") and msg["to_email"] == "bob@example.com"
    for query in (
        f'msg_id="{msg["msg_id"]}"',
        'status="delivered" AND Contains(categories, "c1")',
        'unique_args[\'plan\']="gold" AND from_email="alice@example.com"',
        'subject LIKE "Hel%" AND NOT status="not_delivered"',
        'Contains(events, "processed") AND Contains(events, "delivered")',
    ):
        assert wait_messages(node, key, query, delivered) == [msg], query
    for query in ('status="not_delivered"', 'Contains(categories, "c2")'):
        assert search(node, key, query).json() == {"messages": []}, query


def test_message_detail_with_events(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "carol@example.com", "550-gone@example.com", custom_args={"a": "1"})
    found = wait_messages(node, key, "", lambda m: len({x["status"] for x in m}) == 2)
    status = {m["to_email"]: m["status"] for m in found}
    assert status == {"carol@example.com": "delivered", "550-gone@example.com": "not_delivered"}
    (bounced,) = [m for m in found if m["status"] == "not_delivered"]
    r = call(node.http_port, "GET", f"/v3/messages/{bounced['msg_id']}", key=key)
    assert r.status == 200, r.body
    detail = r.json()
    assert detail["to_email"] == "550-gone@example.com"
    assert detail["status"] == "not_delivered" and detail["subject"] == "Hello"
    assert detail["unique_args"] == '{"a":"1"}'
    names = [e["event_name"] for e in detail["events"]]
    assert names == ["processed", "bounced"], detail
    assert detail["events"][1]["bounce_type"] == "hard"
    assert detail["events"][1]["reason"].startswith("550")


def test_bad_query_and_limit_are_400(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    key = node.create_key()
    r = search(node, key, 'to_email="a@b.c" AND bad_field="x"')
    assert r.status == 400
    (err,) = r.json()["errors"]
    assert "bad_field" in err["message"] and "character 21" in err["message"]
    assert err["field"] == "query"
    for limit in ("0", "1001", "ten", "-1"):
        r = call(node.http_port, "GET", f"/v3/messages?limit={limit}", key=key)
        assert r.status == 400 and r.json()["errors"][0]["field"] == "limit", limit
    assert search(node, key, None, 1000).status == 200
    assert search(node, key, None, 1).status == 200
    r = call(node.http_port, "GET", "/v3/messages/nope", key=key)
    assert r.status == 404
    assert r.json()["errors"][0] == {"message": "not found", "field": "message_id", "help": None}


def test_tenants_and_scopes(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(fast_config(fake_mx.port)).start()
    key_a, key_b = node.create_key(tenant="a"), node.create_key(tenant="b")
    send(node, key_a, "same@example.com", subject="for a")
    send(node, key_b, "same@example.com", subject="for b")
    query = 'to_email="same@example.com"'
    (a,) = wait_messages(node, key_a, query, delivered)
    (b,) = wait_messages(node, key_b, query, delivered)
    assert (a["subject"], b["subject"]) == ("for a", "for b")
    assert search(node, key_a, "").json()["messages"] == [a]
    for key, other in ((key_a, b), (key_b, a)):
        r = call(node.http_port, "GET", f"/v3/messages/{other['msg_id']}", key=key)
        assert r.status == 404, r.body
        assert search(node, key, f'msg_id="{other["msg_id"]}"').json() == {"messages": []}
    send_only = node.create_key(scopes="mail.send", tenant="a")
    assert search(node, send_only, query).status == 403
    r = call(node.http_port, "GET", f"/v3/messages/{a['msg_id']}", key=send_only)
    assert r.status == 403
    for scope in ("messages.read", "email_activity.read"):
        reader = node.create_key(scopes=scope, tenant="a")
        assert search(node, reader, query).json()["messages"] == [a], scope


def test_retention_removes_old_rows(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    config = fast_config(fake_mx.port)
    config["activity"] = {"retention": "2s"}
    node = node_factory(config).start()
    key = node.create_key()
    send(node, key, "old@example.com")
    assert wait_messages(node, key, 'to_email="old@example.com"', delivered)
    gone = wait_messages(node, key, 'to_email="old@example.com"', lambda m: not m)
    assert gone == [], node.log_tail()
    r = call(node.http_port, "GET", "/metrics")
    assert "postline_activity_rows_pruned_total" in r.body.decode()
