"""Issue 15's failure test: under load through two Postline nodes, kill -9 one NATS server,
then the Postline node dispatching the webhook. Every message whose accept was
acknowledged (202) is delivered at the MX, and each of its processed and delivered
events reaches the webhook receiver and the activity store (the surviving node's
GET /v3/messages). Duplicates are allowed and counted (printed); nothing may be missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.conftest import call
from tests.integration.test_cluster import cluster_config, send
from tests.integration.test_webhooks_delivery import S

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, stop_all
from postline.testing.postgres import admin_dsn, fresh_database
from postline.webhooks.receiver import WebhookReceiver

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

REQUESTS = 100  # of RCPTS recipients each, over DOMAINS domains
RCPTS = 2
DOMAINS = 8
KILL_NATS_AT = 30  # requests answered before a NATS server is killed
KILL_NODE_AT = 60  # ... and before the webhook's dispatching node is killed
HOOKS = {"allow_private": True, "retry_min": "200ms", "retry_max": "500ms", "batch_wait": "200ms"}


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class Load:
    """REQUESTS mail sends from 4 threads, alternating nodes while both live; records the
    recipients of every 202 and calls the kills when as many requests were answered."""

    def __init__(self, nodes: list[NodeProcess], key: str) -> None:
        self.nodes = nodes
        self.key = key
        self.dead: set[int] = set()  # indexes of killed nodes: sent nothing more
        self.acked: list[str] = []
        self.refused = 0  # not acknowledged (an error, or a node killed mid-request)
        self.answered = 0
        self._lock = threading.Lock()
        self.hooks: dict[int, Callable[[], None]] = {}

    def one(self, i: int) -> None:
        rcpts = [f"ld-{i}-{j}@d{(i + j) % DOMAINS}.example" for j in range(RCPTS)]
        live = [n for k, n in enumerate(self.nodes) if k not in self.dead]
        node = live[i % len(live)]
        try:
            status = send(node, self.key, rcpts)
        except OSError:
            status = 0
        with self._lock:
            self.answered += 1
            if status == 202:
                self.acked += rcpts
            else:
                self.refused += 1
            hook = self.hooks.pop(self.answered, None)
        if hook is not None:
            hook()

    def run(self) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(self.one, range(REQUESTS)))


def dispatches(node: NodeProcess) -> bool:
    """The node's log says it dispatches the webhook (its whole log: read as text)."""
    return "dispatching webhook" in (node.workdir / "node.log").read_text(errors="replace")


def dispatcher(nodes: list[NodeProcess]) -> int:
    """The index of the node that dispatches the webhook."""
    for i, node in enumerate(nodes):
        if dispatches(node):
            return i
    raise AssertionError("no node dispatches the webhook")


def activity(node: NodeProcess, key: str) -> Counter[tuple[str, str]]:
    q = urllib.parse.urlencode({"query": 'to_email LIKE "ld-%"', "limit": "1000"})
    r = call(node.http_port, "GET", f"/v3/messages?{q}", key=key)
    assert r.status == 200, r.body
    return Counter((m["to_email"], m["status"]) for m in r.json()["messages"])


async def activity_rows(dsn: str) -> Counter[tuple[str, str]]:
    """(recipient, event) of every stored row of the load, counted."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT to_email, event, count(*) FROM activity_events"
            " WHERE to_email LIKE 'ld-%' GROUP BY 1, 2"
        )
        return Counter({(r[0], r[1]): int(r[2]) for r in rows})
    finally:
        await conn.close()


def test_kill_a_nats_server_then_a_node_under_load_loses_nothing(tmp_path: Path) -> None:
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer()) as mx,
        WebhookReceiver() as rx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["webhooks"] = HOOKS
        cfg["log"] = {"level": "info", "outcomes": "off"}  # "dispatching webhook" names the node
        nodes: list[NodeProcess] = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                nodes.append(NodeProcess(tmp_path / name, cfg).start(60))
            key = nodes[0].create_key(tenant="chaos")
            body = {"url": rx.url, "enabled": True, "processed": True, "delivered": True}
            assert call(nodes[0].http_port, "POST", S, body, key=key).status == 201
            assert wait_for(lambda: any(dispatches(n) for n in nodes), 10.0)
            owner = dispatcher(nodes)
            survivor = nodes[1 - owner]
            load = Load(nodes, key)

            def kill_node() -> None:
                load.dead.add(owner)
                nodes[owner].kill()

            load.hooks = {KILL_NATS_AT: lambda: nc.kill(0), KILL_NODE_AT: kill_node}
            load.run()
            acked = set(load.acked)
            print(f"chaos: {len(acked)} recipients acknowledged, {load.refused} requests not")
            assert len(acked) >= RCPTS * (REQUESTS - KILL_NODE_AT) // 2, survivor.log_tail()

            def delivered() -> Counter[str]:
                return Counter(r for t in mx.transactions for r in t.rcpts if r in acked)

            ok = wait_for(lambda: set(delivered()) == acked, 40.0)
            mx_dupes = {r: n for r, n in delivered().items() if n > 1}
            print(f"chaos: MX duplicates {len(mx_dupes)}: {sorted(mx_dupes)[:20]}")
            assert ok, (sorted(acked - set(delivered()))[:20], survivor.log_tail())

            want = {(r, e) for r in acked for e in ("processed", "delivered")}

            def posted() -> Counter[tuple[str, str]]:
                found = [e for p in rx.bodies() for e in json.loads(p.body)]
                return Counter((e["email"], e["event"]) for e in found if e["email"] in acked)

            ok = wait_for(lambda: want <= set(posted()), 30.0)
            hook_dupes = {k: n for k, n in posted().items() if n > 1}
            print(f"chaos: webhook duplicates {len(hook_dupes)}: {sorted(hook_dupes)[:20]}")
            assert ok, (sorted(want - set(posted()))[:20], survivor.log_tail())
            assert dispatches(survivor)  # taken over

            stored = {(r, "delivered") for r in acked}
            ok = wait_for(lambda: stored <= set(activity(survivor, key)), 20.0)
            assert ok, sorted(stored - set(activity(survivor, key)))[:20]
            rows = asyncio.run(activity_rows(dsn))
            assert want <= set(rows), sorted(want - set(rows))[:20]
            print(f"chaos: activity rows {sum(rows.values())} for {len(want)} events wanted")
        finally:
            stop_all(nodes)
