"""Dead letters (max_age passed: listed, replayed, removed) and replays of a time window,
on a running node with a real receiver."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import call, simple_mail, spool_snapshot

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess
from postline.webhooks.receiver import WebhookReceiver

E = "/v3/user/webhooks/event"
TYPES = ("processed", "delivered")


def _config(mx: FakeSmtpServer, **webhooks: Any) -> dict[str, Any]:
    hooks = {"allow_private": True, "retry_min": "200ms", "retry_max": "400ms"}
    return {
        "delivery": {"routes": {"*": f"127.0.0.1:{mx.port}"}},
        "webhooks": {**hooks, **webhooks},
    }


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _send(node: NodeProcess, key: str, to: str, **extra: Any) -> None:
    r = call(node.http_port, "POST", "/v3/mail/send", simple_mail(to, **extra), key=key)
    assert r.status == 202, r.body


def _hook(node: NodeProcess, key: str, url: str) -> str:
    body = {"url": url, "enabled": True, "processed": True, "delivered": True}
    r = call(node.http_port, "POST", f"{E}/settings", body, key=key)
    assert r.status == 201, r.body
    hook_id: str = r.json()["id"]
    return hook_id


def _received(rcv: WebhookReceiver) -> list[str]:
    body = b"".join(p.body for p in rcv.bodies())
    return [i.decode() for i in re.findall(rb'"sg_event_id":"([^"]+)"', body)]


def _wait_replay(node: NodeProcess, key: str, replay_id: str) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(call(node.http_port, "GET", f"{E}/replay/{replay_id}", key=key).json())
        return state["status"] != "running"

    assert _until(done), state
    return state


def test_dead_letters_listed_then_replayed(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    with WebhookReceiver() as rcv:
        rcv.status = 500
        node = node_factory(_config(fake_mx, max_age="2s")).start()
        key, port = node.create_key(), node.http_port
        hook_id = _hook(node, key, rcv.url)
        _send(node, key, "bob@example.com")
        letters: list[dict[str, Any]] = []

        def dead() -> bool:
            r = call(port, "GET", f"{E}/dead_letters?webhook_id={hook_id}", key=key)
            letters[:] = r.json()["dead_letters"]
            return sum(d["count"] for d in letters) == 2

        assert _until(dead), node.log_tail()
        assert all("500" in d["reason"] and d["webhook_id"] == hook_id for d in letters)
        dead_ids = {e["sg_event_id"] for d in letters for e in d["events"]}
        assert {e["event"] for d in letters for e in d["events"]} == set(TYPES)
        assert rcv.events == 0 and rcv.attempts >= 2

        bad = call(port, "GET", f"{E}/dead_letters?limit=51", key=key)
        assert bad.status == 400 and bad.json()["errors"][0]["field"] == "limit"
        rcv.status = 200
        r = call(port, "POST", f"{E}/dead_letters/replay", {"webhook_id": hook_id}, key=key)
        assert r.status == 202, r.body
        state = _wait_replay(node, key, r.json()["id"])
        assert state["status"] == "done" and state["events"] == 2 and state["failed"] == 0
        assert set(_received(rcv)) == dead_ids
        left = call(port, "GET", f"{E}/dead_letters", key=key).json()["dead_letters"]
        assert left == []


def test_replay_of_a_window_delivers_exactly_its_events(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    with WebhookReceiver() as rcv:
        node = node_factory(_config(fake_mx)).start()
        key, other = node.create_key(tenant="a"), node.create_key(tenant="b")
        for i in range(3):  # three seconds apart enough for a window of whole seconds
            _send(node, key, f"r{i}@example.com", categories=[f"c{i % 2}"])
            _send(node, other, f"b{i}@example.com")
            time.sleep(1.05)
        assert _until(lambda: len(spool_snapshot(node.data_dir).of_type("delivered")) == 6)
        events = [e for e in spool_snapshot(node.data_dir).events if e["event"] in TYPES]
        hook_id = _hook(node, key, rcv.url)  # a new webhook: no history
        time.sleep(0.5)
        assert rcv.events == 0

        mine = sorted((e for e in events if e["email"].startswith("r")), key=_ts)
        start = _ts(mine[len(mine) // 2])
        end = start + 1
        window = {"webhook_id": hook_id, "start_time": start, "end_time": end}
        r = call(node.http_port, "POST", f"{E}/replay", window, key=key)
        assert r.status == 202, r.body
        state = _wait_replay(node, key, r.json()["id"])
        expected = sorted(e["sg_event_id"] for e in mine if start <= _ts(e) < end)
        assert state["status"] == "done" and 0 < state["events"] == len(expected) < len(mine)
        assert sorted(_received(rcv)) == expected  # exactly the window, never tenant b's

        with_cat = {**window, "start_time": 0, "end_time": 2**40, "categories": ["c1"]}
        before = len(_received(rcv))
        r = call(node.http_port, "POST", f"{E}/replay", with_cat, key=key)
        _wait_replay(node, key, r.json()["id"])
        expected = sorted(e["sg_event_id"] for e in mine if e["category"] == ["c1"])
        assert sorted(_received(rcv)[before:]) == expected


def _ts(event: dict[str, Any]) -> int:
    ts: int = event["timestamp"]
    return ts


def test_replay_bad_input(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}, "webhooks": {"allow_private": True}})
    node.start()
    key, port = node.create_key(), node.http_port
    hook_id = _hook(node, key, "http://127.0.0.1:9/")
    base = {"webhook_id": hook_id, "start_time": 10, "end_time": 20}
    for body, field in [
        ({**base, "end_time": 10}, "end_time"),
        ({**base, "start_time": -1}, "start_time"),
        ({**base, "end_time": 2**41}, "end_time"),
        ({**base, "event_types": ["nope"]}, "event_types"),
        ({**base, "event_types": []}, "event_types"),
        ({**base, "categories": ["x"] * 11}, "categories"),
        ({**base, "categories": ["x" * 256]}, "categories"),
        ({"webhook_id": hook_id, "start_time": 1}, "end_time"),
        ({**base, "start_time": "soon"}, "start_time"),
    ]:
        r = call(port, "POST", f"{E}/replay", body, key=key)
        assert r.status == 400 and r.json()["errors"][0]["field"] == field, (body, r.body)
    ok = {**base, "event_types": ["spam_report", "processed"], "categories": ["x" * 255] * 10}
    assert call(port, "POST", f"{E}/replay", ok, key=key).status == 202
    assert call(port, "POST", f"{E}/replay", {**base, "webhook_id": "x"}, key=key).status == 404
    assert call(port, "GET", f"{E}/replay/nope", key=key).status == 404
    ids = {"webhook_id": hook_id, "ids": list(range(1001))}
    r = call(port, "POST", f"{E}/dead_letters/replay", ids, key=key)
    assert r.status == 400 and r.json()["errors"][0]["field"] == "ids"
