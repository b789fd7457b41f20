"""Cluster mode's activity search and statistics come from PostgreSQL, shared by the
nodes: mail accepted on node A and on node B is found through either node's
GET /v3/messages and counted once in either node's GET /v3/stats, although both nodes'
pipeline workers read the whole shared event log."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.conftest import call
from tests.integration.test_cluster import cluster_config, send
from tests.integration.test_stats_api import days_around, total

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, stop_all
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


def get(node: NodeProcess, key: str, path: str) -> Any:
    r = call(node.http_port, "GET", path, key=key)
    assert r.status == 200, (r.body, node.log_tail())
    return r.json()


def messages(node: NodeProcess, key: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query, "limit": "100"})
    found: list[dict[str, Any]] = get(node, key, f"/v3/messages?{q}")["messages"]
    return found


async def stored_rows(dsn: str) -> tuple[int, int, int, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            'SELECT count(*), count(DISTINCT "offset"), count(*) FILTER (WHERE to_email LIKE'
            " 'act-%') FROM activity_events"
        )
        names = await conn.fetch("SELECT consumer FROM pipeline_offsets ORDER BY 1")
        return int(row[0]), int(row[1]), int(row[2]), [r[0] for r in names]
    finally:
        await conn.close()


def test_both_nodes_answer_activity_and_stats_from_the_shared_store(tmp_path: Path) -> None:
    with (
        nats_cluster(1) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer()) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["cluster"]["replicas"] = 1  # type: ignore[index]
        nodes: list[NodeProcess] = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                nodes.append(NodeProcess(tmp_path / name, cfg).start(60))
            a, b = nodes
            key = a.create_key(tenant="acttest")
            rcpts = [f"act-{i}@d{i % 2}.example" for i in range(6)]
            for i, rcpt in enumerate(rcpts):  # three accepted by each node
                assert send(a if i % 2 == 0 else b, key, [rcpt]) == 202
            deadline = time.monotonic() + 40
            want = {(r, "delivered") for r in rcpts}
            for node in (a, b):
                while True:
                    found = messages(node, key, 'to_email LIKE "act-%"')
                    got = {(m["to_email"], m["status"]) for m in found}
                    if got == want or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert got == want and len(found) == 6, (found, node.log_tail())
                one = messages(node, key, f'to_email="{rcpts[3].upper()}"')
                assert [m["to_email"] for m in one] == [rcpts[3]]
                detail = get(node, key, f"/v3/messages/{one[0]['msg_id']}")
                names = [e["event_name"] for e in detail["events"]]
                assert names == ["processed", "delivered"]  # each event once
            for node in (a, b):  # counted once though both workers read every event
                while True:
                    stats = total(get(node, key, f"/v3/stats?{days_around()}"))
                    if stats["delivered"] >= 6 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert (stats["requests"], stats["delivered"], stats["processed"]) == (6, 6, 6)
            rows, offsets, ours, names = asyncio.run(stored_rows(dsn))
            assert rows == offsets and ours == 12  # no event stored twice
            assert names == ["activity/dc1", "stats/dc1"]  # one offset per log, not per node
        finally:
            stop_all(nodes)
