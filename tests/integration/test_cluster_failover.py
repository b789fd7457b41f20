"""A cluster node killed with mail in flight: the other node delivers everything that was
acknowledged (cluster/membership.py: the dead node's queues move to the survivor, which
takes over the deliveries it had leased). Duplicates are allowed (at-least-once) and
counted; here the dead node never got past the destination's greeting, so none."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest
from tests.conftest import call, simple_mail
from tests.integration.test_cluster import cluster_config

from postline.cluster.membership import MEMBER_FILE, TTL, owner
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, stop_all
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


def test_kill_9_of_a_node_with_mail_in_flight_loses_nothing(tmp_path: Path) -> None:
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer(greeting_stall=True)) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["delivery"]["shaping"] = SLOW  # type: ignore[index]
        nodes = start_nodes(tmp_path, cfg)
        a, b = nodes
        try:
            b_owns = owned_by(b, nodes, "f", 5)
            key = a.create_key()
            expected = []
            for i in range(20):  # accepted on both nodes, all to queues node b delivers
                rcpts = [f"fo-{i}-{j}@{b_owns[(i + j) % 5]}" for j in range(2)]
                mail = simple_mail()
                mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
                port = (a if i % 2 else b).http_port
                assert call(port, "POST", "/v3/mail/send", mail, key=key).status == 202
                expected += rcpts
            deadline = time.monotonic() + 20
            while mx.connections < 5 and time.monotonic() < deadline:  # b's sessions wait
                time.sleep(0.1)
            assert mx.connections >= 5, b.log_tail()
            b.kill()  # SIGKILL with every delivery leased and in flight
            mx.greeting_stall = False
            deadline = time.monotonic() + 45
            while len(set(_delivered(mx)) & set(expected)) < len(expected):
                assert time.monotonic() < deadline, a.log_tail()
                time.sleep(0.2)
            got = collections.Counter(_delivered(mx))
            assert set(got) == set(expected)
            # never one recipient twice in one transaction (a delivery taken over twice)
            assert all(len(set(t.rcpts)) == len(t.rcpts) for t in mx.transactions)
            duplicates = sum(n - 1 for n in got.values())
            print(f"failover: {len(expected)} recipients, {duplicates} duplicates")
            assert "took over deliveries leased by a departed node" in a.log_tail(10**6)
        finally:
            stop_all(nodes)


def member(node: NodeProcess) -> str:
    """The node's member name in this run (cluster/membership.py)."""
    return (node.data_dir / MEMBER_FILE).read_text().strip()


# Sessions wait on a stalled destination for a minute rather than fail (leases held).
SLOW = {"connect_timeout": "60s", "command_timeout": "60s", "data_timeout": "60s"}


def start_nodes(
    root: Path, cfg: dict[str, object], names: tuple[str, ...] = ("a", "b")
) -> list[NodeProcess]:
    """One node per name, each in ``root/<name>``, started one after the other."""
    nodes = []
    for name in names:
        (root / name).mkdir()
        nodes.append(NodeProcess(root / name, cfg).start(60))
    return nodes


def owned_by(node: NodeProcess, nodes: list[NodeProcess], prefix: str, n: int) -> list[str]:
    """``n`` domains ``<prefix><i>.example`` whose queue ``node`` owns among ``nodes``."""
    ids = {member(x) for x in nodes}
    domains = (f"{prefix}{i}.example" for i in range(200))
    return [d for d in domains if owner(ids, "default", d) == member(node)][:n]


def _delivered(mx: FakeSmtpServer) -> list[str]:
    return [r for t in mx.transactions for r in t.rcpts]


def test_a_lone_node_killed_and_restarted_takes_back_its_leases(tmp_path: Path) -> None:
    """Nobody else saw it go: the restarted node knows the member it was (cluster-member)
    and takes over that run's leases instead of waiting out the engine's hour."""
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer(greeting_stall=True)) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["delivery"]["shaping"] = SLOW  # type: ignore[index]
        node = NodeProcess(tmp_path, cfg).start(60)
        try:
            key = node.create_key()
            expected = [f"re-{i}@r{i % 3}.example" for i in range(12)]
            mail = simple_mail()
            mail["personalizations"] = [{"to": [{"email": r}]} for r in expected]
            assert call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status == 202
            deadline = time.monotonic() + 20
            while mx.connections < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert mx.connections >= 3, node.log_tail()
            first = member(node)
            node.kill()
            time.sleep(TTL + 1)  # its heartbeat expires unseen: only cluster-member knows
            node.start(60)
            assert member(node) != first
            mx.greeting_stall = False
            deadline = time.monotonic() + 30
            while not set(expected) <= set(_delivered(mx)):
                assert time.monotonic() < deadline, node.log_tail()
                time.sleep(0.2)
            assert sorted(_delivered(mx)) == sorted(expected)
        finally:
            node.stop()
