"""``postline audit`` against a real node: a clean spool passes, a lost recipient (its
terminal event deleted by hand, its delivery row gone) is found and fails the command."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from tests.conftest import call
from tests.integration.test_delivery import fast_config, send, wait_for
from tests.integration.test_ops_cli import cli

from postline.testing.fake_smtp import FakeSmtpServer


def test_audit_passes_then_finds_a_deleted_event(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    cfg = fast_config(fake_mx.port, retry_min="1h", retry_max="2h", max_age="3h")
    node = node_factory(cfg).start()
    key = node.create_key()
    send(node, key, "bob@example.com", "carol@example.org", "450-later@example.com")
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 2 and s.of_type("deferred"))
    assert len(snap.of_type("delivered")) == 2, node.log_tail()

    out = cli(node, "audit", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    assert rep["ok"] is True
    assert (rep["messages"], rep["recipients"]) == (3, 3)
    assert rep["terminal"] == {"delivered": 2} and rep["queued"] == 1  # the deferred one

    # A recipient whose delivered event vanished: not terminal, and no longer queued.
    with sqlite3.connect(node.data_dir / "spool.db") as conn:
        gone = conn.execute(
            "DELETE FROM events WHERE event = 'delivered' AND email = 'bob@example.com'"
        )
        assert gone.rowcount == 1
    out = cli(node, "audit")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "bob@example.com: last event processed" in out.stdout
    assert "carol@example.org" not in out.stdout.split("BROKEN", 1)[1]
    assert "FAILED" in out.stdout

    # --since after everything: nothing to audit, nothing broken
    out = cli(node, "audit", "--since", "4102444800")
    assert out.returncode == 0 and "recipients 0" in out.stdout, out.stdout
    bad = cli(node, "audit", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr


def test_audit_checks_each_enabled_webhook_got_its_events(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    from postline.webhooks.receiver import WebhookReceiver

    cfg = fast_config(fake_mx.port)
    cfg["webhooks"] = {"allow_private": True, "retry_min": "200ms", "retry_max": "500ms"}
    node = node_factory(cfg).start()
    key = node.create_key()
    with WebhookReceiver() as receiver:
        body = {"url": receiver.url, "enabled": True, "processed": True, "delivered": True}
        reply = call(node.http_port, "POST", "/v3/user/webhooks/event/settings", body, key=key)
        assert reply.status == 201, reply.body
        hook_id = reply.json()["id"]
        send(node, key, "bob@example.com", "carol@example.org")
        wait_for(node, lambda s: len(s.of_type("delivered")) == 2)
        deadline = time.monotonic() + 20
        while receiver.events < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.events == 4
        deadline = time.monotonic() + 10  # the offset is committed just after the post
        while time.monotonic() < deadline:
            rep = json.loads(cli(node, "audit", "--json").stdout)
            if rep["webhooks"] and rep["webhooks"][0]["pending"] == 0:
                break
            time.sleep(0.1)
        assert rep["ok"] is True, rep
        assert rep["webhooks"] == [
            {"id": hook_id, "reached": 4, "pending": 0, "missing": [], "dead_letters": 0}
        ]
    # The ledger loses its record of the posts: the audit can no longer prove them.
    with sqlite3.connect(node.data_dir / "webhooks.db") as conn:
        assert conn.execute("DELETE FROM ledger").rowcount >= 1
    out = cli(node, "audit")
    assert out.returncode == 1, out.stdout
    assert f"webhook     {hook_id}: 0 reached" in out.stdout and "4 MISSING" in out.stdout
