"""Event webhooks end to end: mail in, the fake MX out, signed event batches to a real
receiver on loopback, each verified with the official SendGrid client's helper."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from sendgrid.helpers.eventwebhook import EventWebhook
from tests.conftest import call, simple_mail, spool_snapshot

from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess
from postline.webhooks.receiver import Received, WebhookReceiver

S = "/v3/user/webhooks/event/settings"
SIG, TS = "x-twilio-email-event-webhook-signature", "x-twilio-email-event-webhook-timestamp"


def _config(mx: FakeSmtpServer, **webhooks: Any) -> dict[str, Any]:
    hooks = {"allow_private": True, "retry_min": "200ms", "retry_max": "500ms"}
    return {
        "delivery": {"routes": {"*": f"127.0.0.1:{mx.port}"}, "retry_min": "300ms"},
        "webhooks": {**hooks, **webhooks},
    }


def _webhook(node: NodeProcess, key: str, url: str, signed: bool = True) -> tuple[str, str]:
    body = {"url": url, "enabled": True, "processed": True, "delivered": True}
    hook_id = call(node.http_port, "POST", S, body, key=key).json()["id"]
    if not signed:
        return hook_id, ""
    r = call(node.http_port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": True}, key=key)
    return hook_id, r.json()["public_key"]


def _verifier(public_key: Callable[[], str]) -> Callable[[bytes, dict[str, str]], bool]:
    helper = EventWebhook()

    def verify(body: bytes, headers: dict[str, str]) -> bool:
        if SIG not in headers:
            return False
        key = helper.convert_public_key_to_ecdsa(public_key())
        return bool(helper.verify_signature(body.decode(), headers[SIG], headers[TS], key))

    return verify


def _send(node: NodeProcess, key: str, *rcpts: str) -> None:
    mail = simple_mail()
    mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
    assert call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status == 202


def _ids(posts: list[Received]) -> Counter[str]:
    found = re.findall(rb'"sg_event_id":"([^"]+)"', b"".join(p.body for p in posts))
    return Counter(i.decode() for i in found)


def _wanted(node: NodeProcess) -> set[str]:
    events = spool_snapshot(node.data_dir).events
    return {e["sg_event_id"] for e in events if e["event"] in ("processed", "delivered")}


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _metric(node: NodeProcess, name: str, hook_id: str) -> float:
    with urllib.request.urlopen(f"{node.base_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf'^postline_{name}_total{{webhook="{hook_id}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_signed_events_reach_the_receiver(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    public = [""]
    with WebhookReceiver(_verifier(lambda: public[0])) as rcv:
        node = node_factory(_config(fake_mx)).start()
        key = node.create_key()
        hook_id, public[0] = _webhook(node, key, rcv.url)
        _send(node, key, "bob@example.com", "carol@example.org")
        assert _until(lambda: rcv.events >= 4), node.log_tail()
        posts = rcv.bodies()
        assert posts and all(p.verified for p in posts)
        assert all(p.headers["content-type"].startswith("application/json") for p in posts)
        assert all(p.headers["user-agent"].startswith("Postline") for p in posts)
        kinds = Counter(k.decode() for k in re.findall(rb'"event":"(\w+)"', rcv.bodies()[0].body))
        got = _ids(posts)
        assert set(got) == _wanted(node) and len(got) == 4
        assert b'"subject"' not in b"".join(p.body for p in posts)  # meta is never posted
        assert kinds["processed"] >= 1
        assert _metric(node, "webhook_posted_events", hook_id) == 4


def test_a_dead_receiver_never_delays_another(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    with WebhookReceiver() as stalled, WebhookReceiver() as live:
        stalled.delay = 30.0  # answers long after the post's timeout
        node = node_factory(_config(fake_mx, timeout="1s")).start()
        key = node.create_key()
        stalled_id, _ = _webhook(node, key, stalled.url, signed=False)
        _webhook(node, key, live.url, signed=False)
        for i in range(5):
            _send(node, key, f"r{i}@example.com")
        assert _until(lambda: set(_ids(live.bodies())) == _wanted(node) and live.events >= 10)
        assert stalled.events == 0 and stalled.attempts >= 1
        assert _until(lambda: _metric(node, "webhook_failures", stalled_id) >= 1)


def test_receiver_down_and_node_killed_gets_every_event(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    public = [""]
    with WebhookReceiver(_verifier(lambda: public[0])) as rcv:
        node = node_factory(_config(fake_mx)).start()
        key = node.create_key()
        hook_id, public[0] = _webhook(node, key, rcv.url)
        _send(node, key, "first@example.com")
        assert _until(lambda: rcv.events >= 2)
        rcv.down()
        for i in range(10):
            _send(node, key, f"during{i}@example.com")
        assert _until(lambda: _metric(node, "webhook_failures", hook_id) >= 2)
        node.kill()  # -9 during the outage
        node.start()
        _send(node, key, "after@example.com")
        rcv.up()
        wanted = [0]

        def complete() -> bool:
            wanted[0] = len(_wanted(node))
            return wanted[0] == 24 and set(_ids(rcv.bodies())) >= _wanted(node)

        assert _until(complete, 30), (wanted, rcv.events, node.log_tail())
        posts = rcv.bodies()
        assert all(p.verified for p in posts)
        ids = _ids(posts)
        duplicates = sum(n - 1 for n in ids.values())
        assert sum(ids.values()) == len(ids) + duplicates  # duplicates allowed, counted
        assert set(ids) == _wanted(node)


def test_dns_rebinding_is_refused_at_connection(
    node_factory: Any, fake_mx: FakeSmtpServer, dns_server: FakeDnsServer
) -> None:
    with WebhookReceiver() as rcv:
        cfg = _config(fake_mx, allow_private=False)
        cfg["dns"] = {"nameservers": [dns_server.address]}
        node = node_factory(cfg).start()
        key = node.create_key()
        dns_server.add_a("hook.test", "93.184.216.34")  # public when the webhook is made
        hook_id, _ = _webhook(node, key, f"http://hook.test:{rcv.port}/hook", signed=False)
        dns_server.remove("hook.test")
        dns_server.add_a("hook.test", "127.0.0.1", ttl=1)  # then it points at loopback
        _send(node, key, "bob@example.com")
        assert _until(lambda: _metric(node, "webhook_failures", hook_id) >= 2)
        assert rcv.attempts == 0
        assert dns_server.query_count("hook.test") >= 2


def test_a_node_stops_while_a_webhook_waits_to_retry(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    with WebhookReceiver() as rcv:
        rcv.status = 503
        node = node_factory(_config(fake_mx, retry_min="1h", retry_max="1h")).start()
        key = node.create_key()
        hook_id, _ = _webhook(node, key, rcv.url, signed=False)
        _send(node, key, "bob@example.com")
        assert _until(lambda: _metric(node, "webhook_failures", hook_id) >= 1)
        # The dispatcher sleeps an hour before its next attempt; SIGTERM must not wait for
        # it (NodeProcess.stop raises after 20 s) and the node exits cleanly.
        assert node.stop() == 0
