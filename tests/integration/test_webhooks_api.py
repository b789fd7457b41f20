"""The event webhook settings API on a running node: SendGrid's shapes, tenants, scopes,
bad input, bounds, receiver address policy (tsg_webhooks_v3.json)."""

from __future__ import annotations

from typing import Any

from tests.conftest import call

from postline.testing.dns_server import FakeDnsServer
from postline.testing.node import NodeProcess
from postline.webhooks.receiver import WebhookReceiver
from postline.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER

S = "/v3/user/webhooks/event/settings"
TYPES = {"bounce", "click", "deferred", "delivered", "dropped", "group_resubscribe"}
TYPES |= {"group_unsubscribe", "open", "processed", "spam_report", "unsubscribe"}
# The OpenAPI's response properties (account_status_change only with include=...).
UNSIGNED = {"enabled", "url", *TYPES, "friendly_name", "id", "created_date", "updated_date"}
UNSIGNED |= {"oauth_client_id", "oauth_token_url"}
NO_DATES = UNSIGNED - {"created_date", "updated_date"} | {"public_key"}


def _node(node_factory: Any, **webhooks: Any) -> NodeProcess:
    node: NodeProcess = node_factory({"delivery": {"enabled": False}, "webhooks": webhooks})
    return node.start()


def _field(reply: Any) -> str | None:
    field: str | None = reply.json()["errors"][0].get("field")
    return field


def test_crud_in_sendgrid_shapes(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True)
    key, port = node.create_key(), node.http_port
    body = {"url": "http://127.0.0.1:9/a", "enabled": True, "bounce": True, "friendly_name": "A"}
    body |= {"oauth_client_id": "c", "oauth_client_secret": "s", "oauth_token_url": "https://o"}
    r = call(port, "POST", S, body, key=key)
    assert r.status == 201, r.body
    made = r.json()
    assert set(made) >= UNSIGNED and "oauth_client_secret" not in made
    assert made["bounce"] and not made["processed"] and made["friendly_name"] == "A"
    hook_id = made["id"]

    got = call(port, "GET", f"{S}/{hook_id}", key=key).json()
    assert set(got) >= NO_DATES and got["public_key"] == "" and got["oauth_client_id"] == "c"
    with_acs = call(port, "GET", f"{S}/{hook_id}?include=account_status_change", key=key)
    assert with_acs.json()["account_status_change"] is False

    r = call(port, "PATCH", f"{S}/{hook_id}", {"processed": True, "bounce": False}, key=key)
    assert r.status == 200 and set(r.json()) >= UNSIGNED
    assert r.json()["processed"] and not r.json()["bounce"] and r.json()["url"] == body["url"]

    second = call(port, "POST", S, {"url": "http://127.0.0.1:9/b"}, key=key).json()
    listed = call(port, "GET", f"{S}/all", key=key).json()
    assert listed["max_allowed"] == 10
    assert [h["id"] for h in listed["webhooks"]] == [hook_id, second["id"]]

    assert call(port, "DELETE", f"{S}/{hook_id}", key=key).status == 204
    r = call(port, "GET", f"{S}/{hook_id}", key=key)
    assert r.status == 404 and r.json()["errors"][0]["message"] == "Invalid id provided."
    assert call(port, "DELETE", f"{S}/{hook_id}", key=key).status == 404


def test_signing_key_on_and_off(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True)
    key, port = node.create_key(), node.http_port
    hook_id = call(port, "POST", S, {"url": "http://127.0.0.1:9/"}, key=key).json()["id"]
    on = call(port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": True}, key=key)
    assert on.status == 200 and on.json()["id"] == hook_id
    public = on.json()["public_key"]
    assert len(public) == 124 and public.startswith("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
    assert call(port, "GET", f"{S}/signed/{hook_id}", key=key).json()["public_key"] == public
    assert call(port, "GET", f"{S}/{hook_id}", key=key).json()["public_key"] == public
    off = call(port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": False}, key=key)
    assert off.json()["public_key"] == ""
    again = call(port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": True}, key=key)
    assert again.json()["public_key"] == public  # the key is kept, receivers keep working
    bad = call(port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": "yes"}, key=key)
    assert bad.status == 400 and _field(bad) == "enabled"
    assert call(port, "GET", f"{S}/signed/nope", key=key).status == 404


def test_legacy_single_webhook(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True)
    key, port = node.create_key(), node.http_port
    empty = call(port, "GET", S, key=key).json()
    assert empty["url"] == "" and empty["enabled"] is False
    assert call(port, "GET", f"{S}/signed", key=key).json() == {"public_key": ""}
    assert call(port, "PATCH", f"{S}/signed", {"enabled": True}, key=key).status == 404
    r = call(port, "PATCH", S, {"enabled": True}, key=key)  # creating needs a url
    assert r.status == 400 and _field(r) == "url"
    r = call(port, "PATCH", S, {"url": "http://127.0.0.1:9/x", "enabled": True}, key=key)
    assert r.status == 200 and r.json()["url"] == "http://127.0.0.1:9/x"
    call(port, "POST", S, {"url": "http://127.0.0.1:9/newer"}, key=key)
    r = call(port, "PATCH", S, {"delivered": True}, key=key)  # the oldest one
    assert r.json()["url"] == "http://127.0.0.1:9/x" and r.json()["delivered"]
    public = call(port, "PATCH", f"{S}/signed", {"enabled": True}, key=key).json()["public_key"]
    assert call(port, "GET", f"{S}/signed", key=key).json() == {"public_key": public}
    assert len(call(port, "GET", f"{S}/all", key=key).json()["webhooks"]) == 2


def test_one_tenant_never_sees_or_changes_anothers(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True)
    a, b, port = node.create_key(tenant="a"), node.create_key(tenant="b"), node.http_port
    hook_id = call(port, "POST", S, {"url": "http://127.0.0.1:9/a"}, key=a).json()["id"]
    assert call(port, "GET", f"{S}/all", key=b).json()["webhooks"] == []
    assert call(port, "GET", S, key=b).json()["url"] == ""
    for method, path, body in [
        ("GET", f"{S}/{hook_id}", None),
        ("PATCH", f"{S}/{hook_id}", {"enabled": True}),
        ("DELETE", f"{S}/{hook_id}", None),
        ("GET", f"{S}/signed/{hook_id}", None),
        ("PATCH", f"{S}/signed/{hook_id}", {"enabled": True}),
        ("GET", f"/v3/user/webhooks/event/dead_letters?webhook_id={hook_id}", None),
        ("POST", "/v3/user/webhooks/event/dead_letters/replay", {"webhook_id": hook_id}),
        ("POST", "/v3/user/webhooks/event/replay", _window(hook_id)),
        ("POST", "/v3/user/webhooks/event/test", {"url": "http://127.0.0.1:9/", "id": hook_id}),
    ]:
        r = call(port, method, path, body, key=b)
        assert r.status == 404, (method, path, r.body)
    # The same url is no clash across tenants, and a's webhook is untouched.
    assert call(port, "POST", S, {"url": "http://127.0.0.1:9/a"}, key=b).status == 201
    got = call(port, "GET", f"{S}/{hook_id}", key=a).json()
    assert got["enabled"] is False and got["public_key"] == ""


def _window(hook_id: str) -> dict[str, Any]:
    return {"webhook_id": hook_id, "start_time": 0, "end_time": 10}


def test_scopes_are_checked(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True)
    port = node.http_port
    reader = node.create_key(scopes="user.webhooks.event.settings.read")
    assert call(port, "GET", f"{S}/all", key=reader).status == 200
    for method, path in [("POST", S), ("PATCH", S), ("POST", "/v3/user/webhooks/event/test")]:
        assert call(port, method, path, {"url": "http://127.0.0.1:9/"}, key=reader).status == 403
    mail_only = node.create_key(scopes="mail.send")
    assert call(port, "GET", f"{S}/all", key=mail_only).status == 403
    assert call(port, "GET", f"{S}/all").status == 401


def test_bad_input_and_bounds(node_factory: Any) -> None:
    node = _node(node_factory, allow_private=True, max_webhooks=2)
    key, port = node.create_key(), node.http_port
    for body, field in [
        ({}, "url"),
        ({"url": "ftp://x.test/"}, "url"),
        ({"url": "http://u:p@127.0.0.1:9/"}, "url"),
        ({"url": "http://127.0.0.1:9/" + "a" * 2048}, "url"),
        ({"url": "http://127.0.0.1:9/", "enabled": "yes"}, "enabled"),
        ({"url": "http://127.0.0.1:9/", "friendly_name": "n" * 101}, "friendly_name"),
        ({"url": "http://127.0.0.1:9/", "oauth_client_id": "c"}, "oauth_token_url"),
    ]:
        r = call(port, "POST", S, body, key=key)
        assert r.status == 400 and _field(r) == field, (body, r.body)
    assert call(port, "POST", S, b"{", key=key).status == 400
    ok = {"url": "http://127.0.0.1:9/" + "a" * (2048 - 19), "friendly_name": "n" * 100}
    assert call(port, "POST", S, ok, key=key).status == 201
    dup = call(port, "POST", S, ok, key=key)
    assert dup.status == 400 and "already exists" in dup.json()["errors"][0]["message"]
    assert call(port, "POST", S, {"url": "http://127.0.0.1:9/2"}, key=key).status == 201
    full = call(port, "POST", S, {"url": "http://127.0.0.1:9/3"}, key=key)
    assert full.status == 400 and "maximum number of webhooks" in full.body.decode()


def test_private_receivers_are_refused(node_factory: Any, dns_server: FakeDnsServer) -> None:
    node = node_factory(
        {"delivery": {"enabled": False}, "dns": {"nameservers": [dns_server.address]}}
    ).start()
    key, port = node.create_key(), node.http_port
    dns_server.add_a("rebind.test", "127.0.0.1")
    dns_server.add_a("public.test", "93.184.216.34")
    for url in [
        "http://127.0.0.1:9/",
        "http://[::1]:9/",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
        "http://rebind.test/",
        "http://nxdomain.test/",
    ]:
        r = call(port, "POST", S, {"url": url}, key=key)
        assert r.status == 400 and _field(r) == "url", (url, r.body)
    assert call(port, "POST", S, {"url": "http://public.test/hook"}, key=key).status == 201
    test = call(
        port, "POST", "/v3/user/webhooks/event/test", {"url": "http://rebind.test/"}, key=key
    )
    assert test.status == 400 and _field(test) == "url"


def test_the_test_endpoint_posts_a_signed_sample(node_factory: Any) -> None:
    from sendgrid.helpers.eventwebhook import EventWebhook

    node = _node(node_factory, allow_private=True)
    key, port = node.create_key(), node.http_port
    with WebhookReceiver() as rcv:
        hook_id = call(port, "POST", S, {"url": rcv.url}, key=key).json()["id"]
        public = call(port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": True}, key=key)
        body = {"url": rcv.url, "id": hook_id}
        r = call(port, "POST", "/v3/user/webhooks/event/test", body, key=key)
        assert r.status == 204, r.body
        (post,) = rcv.bodies()
        helper = EventWebhook()
        pk = helper.convert_public_key_to_ecdsa(public.json()["public_key"])
        sig, ts = post.headers[SIGNATURE_HEADER.lower()], post.headers[TIMESTAMP_HEADER.lower()]
        assert helper.verify_signature(post.body.decode(), sig, ts, pk)
        assert rcv.events == 11
        rcv.status = 500
        r = call(port, "POST", "/v3/user/webhooks/event/test", {"url": rcv.url}, key=key)
        assert r.status == 400 and "500" in r.body.decode()
