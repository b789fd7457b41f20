"""Cluster leases are short and renewed while held (cluster/leases.py): a node whose
destination is slow keeps its work past the lease time (nobody sends it again), and a
node killed with work in hand leaves it to the other node (delivered, nothing lost)."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest
from tests.conftest import call, simple_mail
from tests.integration.test_cluster import cluster_config
from tests.integration.test_cluster_failover import SLOW, owned_by, start_nodes

from postline import config as config_mod
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import NodeProcess, stop_all
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

LEASE = 2.0  # cluster.lease for this test (seconds)


def test_held_leases_are_renewed_and_a_killed_nodes_work_is_delivered(tmp_path: Path) -> None:
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer(greeting_delay=2.5 * LEASE)) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        cfg["cluster"]["lease"] = f"{LEASE:g}s"  # type: ignore[index]
        cfg["delivery"]["shaping"] = SLOW  # type: ignore[index]
        nodes = start_nodes(tmp_path, cfg)
        a, b = nodes
        try:
            a_owns = owned_by(a, nodes, "l", 3)
            key = a.create_key()

            def send(node: NodeProcess, rcpts: list[str]) -> None:
                for r in rcpts:  # one message each: one session each
                    mail = simple_mail(to=r)
                    assert (
                        call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status == 202
                    )

            # 1. a's sessions wait 2.5 lease times for the greeting: its leases must not
            # run out meanwhile (else a leases the same deliveries again and sends twice)
            slow_rcpts = [f"slow-{i}@{a_owns[i % 3]}" for i in range(6)]
            send(b, slow_rcpts)
            deadline = time.monotonic() + 60
            while not set(slow_rcpts) <= set(_delivered(mx)):
                assert time.monotonic() < deadline, a.log_tail()
                time.sleep(0.2)
            time.sleep(LEASE)  # a second send, had there been one, would land by now
            got = collections.Counter(r for r in _delivered(mx) if r.startswith("slow-"))
            assert got == collections.Counter(slow_rcpts), "sent twice: " + str(got)

            # 2. a holds work (sessions stalled at the greeting) and is killed: b delivers it
            mx.greeting_delay, mx.greeting_stall = 0.0, True
            before = mx.connections
            held = [f"held-{i}@{a_owns[i % 3]}" for i in range(6)]
            send(b, held)
            deadline = time.monotonic() + 30
            while mx.connections < before + len(held) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert mx.connections >= before + len(held), a.log_tail()
            a.kill()  # SIGKILL: its leases stop being renewed
            mx.greeting_stall = False
            deadline = time.monotonic() + 45
            while not set(held) <= set(_delivered(mx)):
                assert time.monotonic() < deadline, b.log_tail()
                time.sleep(0.2)
            assert collections.Counter(r for r in _delivered(mx) if r.startswith("held-")) == (
                collections.Counter(held)
            )
        finally:
            stop_all(nodes)


def _delivered(mx: FakeSmtpServer) -> list[str]:
    return [r for t in mx.transactions for r in t.rcpts]


def test_the_lease_setting_defaults_to_a_minute_and_refuses_less_than_a_second(
    tmp_path: Path,
) -> None:
    both = 'nats = ["nats://h:4222"]\npostgres = "postgresql://h/db"'
    path = tmp_path / "c.toml"
    path.write_text(f"[cluster]\n{both}\n")
    cluster = config_mod.load(path).cluster
    assert cluster is not None and cluster.lease == 60.0
    path.write_text(f'[cluster]\n{both}\nlease = "500ms"\n')
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path)
    assert "'cluster.lease'" in str(err.value) and "at least 1s" in str(err.value)
