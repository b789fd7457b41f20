"""Cluster mode's webhooks live in PostgreSQL, shared by the nodes (webhooks/pg_store.py),
and each is dispatched by one node of the cluster (webhooks/pg_service.py): a webhook
created through node A is seen, signed and changed through node B, every event reaches
the receiver once although both nodes' workers read the whole shared log, and a change
made through either node reaches the node that dispatches it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.conftest import call
from tests.integration.test_cluster import cluster_config, send
from tests.integration.test_webhooks_delivery import S, _verifier

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, postline_cmd, stop_all
from postline.testing.postgres import admin_dsn, fresh_database
from postline.webhooks.pg_store import namespace
from postline.webhooks.receiver import Received, WebhookReceiver

TRIES = 20  # racing pairs of creates
pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

HOOKS = {
    "allow_private": True,
    "retry_min": "200ms",
    "retry_max": "500ms",
    "batch_wait": "200ms",
    "max_webhooks": 2,
}


def events(posts: list[Received]) -> list[dict[str, Any]]:
    return [e for p in posts for e in json.loads(p.body)]


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def reaches(
    sender: NodeProcess, key: str, rx: WebhookReceiver, tag: str, signed: bool = False
) -> bool:
    """Mail until one message's events reach ``rx`` (signed, if asked): the dispatching
    node sees a settings change made elsewhere at its next reconciliation, within
    pg_service.OWN_EVERY."""
    probes: set[str] = set()

    def arrived() -> bool:
        posts = [p for p in rx.bodies() if p.verified or not signed]
        return bool(probes & {e["email"] for e in events(posts)})

    def probe() -> bool:
        rcpt = f"{tag}-{len(probes)}@d0.example"
        probes.add(rcpt)
        assert send(sender, key, [rcpt]) == 202
        return wait_for(arrived, 1.0)

    return wait_for(probe, 20.0)


def races(a: NodeProcess, b: NodeProcess, key: str, url: str) -> list[list[int]]:
    """TRIES pairs of creates at once, one through each node: each pair's statuses."""
    pairs: list[list[int]] = []
    for i in range(TRIES):
        barrier = threading.Barrier(2)

        def create(node: NodeProcess, n: int, tag: str = f"{i}", bar: Any = barrier) -> int:
            body = {"url": f"{url}/{tag}-{n}", "enabled": False}
            bar.wait()
            return call(node.http_port, "POST", S, body, key=key).status

        with ThreadPoolExecutor(2) as pool:
            pairs.append(sorted(pool.map(create, (a, b), (0, 1))))
        for hook in call(a.http_port, "GET", f"{S}/all", key=key).json()["webhooks"]:
            if not hook["enabled"]:
                assert call(a.http_port, "DELETE", f"{S}/{hook['id']}", key=key).status == 204
    return pairs


async def owner_sessions(dsn: str, terminate: bool = False) -> int:
    """How many sessions hold a webhook lock of log dc1 in this test's database
    (terminated, if asked). pg_locks lists every database's locks: tests running at the
    same time in other processes hold locks of their own "dc1" webhooks."""
    conn = await asyncpg.connect(dsn)
    try:
        pids = await conn.fetch(
            "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1 AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            namespace("dc1") % 2**32,
        )
        for (pid,) in pids if terminate else []:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        return len(pids)
    finally:
        await conn.close()


async def ledger(dsn: str, hook_id: str) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT log, status, count FROM webhook_ledger WHERE webhook_id = $1", hook_id
        )
        return [(r[0], r[1], int(r[2])) for r in rows]
    finally:
        await conn.close()


def test_webhooks_are_shared_and_each_is_dispatched_by_one_node(tmp_path: Path) -> None:
    public_key = [""]
    with (
        nats_cluster(1) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer()) as mx,
        WebhookReceiver(_verifier(lambda: public_key[0])) as first,
        WebhookReceiver() as second,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["cluster"]["replicas"] = 1  # type: ignore[index]
        cfg["webhooks"] = HOOKS
        nodes: list[NodeProcess] = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                nodes.append(NodeProcess(tmp_path / name, cfg).start(60))
            a, b = nodes
            key = a.create_key(tenant="hooks")
            body = {"url": first.url, "enabled": True, "processed": True, "delivered": True}
            created = call(a.http_port, "POST", S, body, key=key)
            assert created.status == 201, (created.body, a.log_tail())
            hook_id = created.json()["id"]
            # node B knows it: lists it, signs it, serves the legacy routes
            listed = call(b.http_port, "GET", f"{S}/all", key=key).json()["webhooks"]
            assert [h["id"] for h in listed] == [hook_id]
            signed = call(b.http_port, "PATCH", f"{S}/signed/{hook_id}", {"enabled": True}, key=key)
            assert signed.status == 200, signed.body
            public_key[0] = signed.json()["public_key"]
            legacy = call(a.http_port, "GET", f"{S}/signed", key=key).json()
            assert legacy["public_key"] == public_key[0]
            assert call(a.http_port, "GET", S, key=key).json()["url"] == first.url
            assert reaches(a, key, first, "wh-signed", signed=True), a.log_tail()

            rcpts = [f"wh-{i}@d{i % 3}.example" for i in range(12)]
            for i, rcpt in enumerate(rcpts):  # half accepted by each node
                assert send(a if i % 2 else b, key, [rcpt]) == 202
            want = {(r, kind) for r in rcpts for kind in ("processed", "delivered")}

            def got(rx: WebhookReceiver) -> set[tuple[str, str]]:
                return {(e["email"], e["event"]) for e in events(rx.bodies())}

            assert wait_for(lambda: want <= got(first)), (got(first), a.log_tail(), b.log_tail())
            ours = [p for p in first.bodies() if any(e["email"] in rcpts for e in events([p]))]
            assert all(p.verified for p in ours)  # signed with the key made through B
            ids = Counter(e["sg_event_id"] for e in events(ours) if e["email"] in rcpts)
            assert len(ids) == 24 and max(ids.values()) == 1  # one dispatcher: no duplicates
            # one ledger row grew with every batch, of every event the receiver got
            row = [("dc1", "delivered", first.events)]
            assert wait_for(lambda: asyncio.run(ledger(dsn, hook_id)) == row, 5.0)
            assert not any((n.data_dir / "webhooks.db").exists() for n in nodes)
            # postline audit (cluster mode) finds every event the webhook was due posted
            out = subprocess.run(
                postline_cmd("audit", "--json", "--config", str(b.config_path)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            audit = {w["id"]: w for w in json.loads(out.stdout)["webhooks"]}
            assert audit[hook_id]["missing"] == [] and audit[hook_id]["pending"] == 0
            assert audit[hook_id]["reached"] == first.events

            # a change through either node reaches the dispatching node
            for node, rx in ((b, second), (a, first)):
                moved = call(node.http_port, "PATCH", f"{S}/{hook_id}", {"url": rx.url}, key=key)
                assert moved.status == 200, moved.body
                assert reaches(a, key, rx, f"wh-moved-{node.http_port}"), node.log_tail()

            # the dispatching node's ownership session ends (PostgreSQL restarted, the
            # connection cut): it stops, a node takes the lock again, events flow on
            assert asyncio.run(owner_sessions(dsn, terminate=True)) == 1
            assert wait_for(lambda: "ownership session lost" in a.log_tail() + b.log_tail())
            assert reaches(b, key, first, "wh-relocked"), (a.log_tail(), b.log_tail())
            assert asyncio.run(owner_sessions(dsn)) == 1

            # the per-tenant limit and URL uniqueness hold across nodes (max_webhooks = 2:
            # this one and one of two made at once, one through each node)
            pairs = races(a, b, key, first.url)
            assert pairs == [[201, 400]] * TRIES, pairs

            gone = call(b.http_port, "DELETE", f"{S}/{hook_id}", key=key)
            assert gone.status == 204
            assert call(a.http_port, "GET", f"{S}/{hook_id}", key=key).status == 404
            assert asyncio.run(ledger(dsn, hook_id)) == []
        finally:
            stop_all(nodes)
