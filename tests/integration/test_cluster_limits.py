"""A site's connection limit holds for the cluster, and a dead node's share returns
(cluster/limits.py): two real nodes on a 3-node NATS cluster deliver to one fake MX that
counts the connections open at once. Each connection carries one message and the MX
greets after a pause, so a node keeps as many connections open as its share allows."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from tests.conftest import call, simple_mail
from tests.integration.test_cluster import cluster_config
from tests.integration.test_cluster_failover import member

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, stop_all
from postline.testing.postgres import admin_dsn, fresh_database
from postline.testing.scrape import scrape

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

LIMIT = 4  # max_connections of the one site (route "*"): for both nodes together


def test_a_sites_connection_limit_holds_for_both_nodes_and_a_dead_nodes_share_returns(
    tmp_path: Path,
) -> None:
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer(greeting_delay=0.1, keep=True)) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        shaping = {"max_connections": LIMIT, "max_messages_per_connection": 1}
        cfg["delivery"]["shaping"] = shaping  # type: ignore[index]
        cfg["log"] = {"level": "info"}  # node A's membership changes, read below
        nodes = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            nodes.append(NodeProcess(tmp_path / name, cfg).start(60))
        a, b = nodes
        try:
            key = a.create_key()
            domains = [f"l{i}.example" for i in range(24)]  # their queues hash over both nodes
            first = [f"one-{i}@{domains[i % len(domains)]}" for i in range(96)]
            for i in range(0, len(first), 12):  # accepted on both nodes
                assert _send(a if i % 24 else b, key, first[i : i + 12]) == 202
            _wait_delivered(mx, first, a)
            delivered = {n.workdir.name: scrape(n.http_port).get("delivered", 0) for n in nodes}
            print(f"limit {LIMIT}: max concurrent {mx.max_concurrent}, delivered {delivered}")
            assert all(delivered.values()), delivered  # both nodes delivered ...
            assert mx.max_concurrent <= LIMIT  # ... within the one limit
            # /metrics on each node: the site's cluster-wide limit and this node's share
            limits = [_series(n, "postline_cluster_site_connection_limit") for n in nodes]
            shares = [_series(n, "postline_cluster_site_connection_share") for n in nodes]
            assert all(list(x.values()) == [float(LIMIT)] for x in limits), limits
            assert sum(v for x in shares for v in x.values()) <= LIMIT, shares
            gone = member(b)
            b.kill()
            _wait(lambda: _sees_alone(a, gone), 20.0, a)
            mx.max_concurrent = mx.concurrent  # the survivor's own peak from here on
            second = [f"two-{i}@{domains[i % len(domains)]}" for i in range(48)]
            for i in range(0, len(second), 12):
                assert _send(a, key, second[i : i + 12]) == 202
            _wait_delivered(mx, second, a)
            print(f"after kill -9 of b: max concurrent {mx.max_concurrent}")
            assert LIMIT // 2 < mx.max_concurrent <= LIMIT  # the whole limit is a's again
        finally:
            stop_all(nodes)


def _series(node: NodeProcess, name: str) -> dict[str, float]:
    text = call(node.http_port, "GET", "/metrics").body.decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf"^{name}{{(.*)}} (\S+)$", text, re.MULTILINE)
    }


def _send(node: NodeProcess, key: str, rcpts: list[str]) -> int:
    mail = simple_mail()
    mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
    return call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status


def _wait(done: object, timeout: float, node: NodeProcess) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)


def _wait_delivered(mx: FakeSmtpServer, rcpts: list[str], node: NodeProcess) -> None:
    want = set(rcpts)
    _wait(lambda: want <= {r for t in mx.transactions for r in t.rcpts}, 45.0, node)


def _sees_alone(node: NodeProcess, gone: str) -> bool:
    """The node's membership view no longer has the killed member (its log says so)."""
    views = [
        rec["nodes"]
        for line in node.log_tail(10**7).splitlines()
        if line.startswith("{") and (rec := json.loads(line)).get("msg") == "cluster nodes changed"
    ]
    return bool(views) and gone not in views[-1]
