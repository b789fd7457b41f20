"""``[cluster]``: the keys, their checks, and a node that refuses fewer JetStream servers
than its replicas; queue ownership (cluster/membership.py) as pure logic."""

from __future__ import annotations

import collections
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline import config as config_mod
from postline.cluster.membership import owner
from postline.testing.nats import nats_cluster, server_binary
from postline.testing.node import postline_cmd
from postline.testing.postgres import admin_dsn, fresh_database

PG = "postgresql://postgres@127.0.0.1:5432/postline"
BOTH = f'nats = ["nats://h:4222"]\npostgres = "{PG}"'  # a valid pair, to add one bad key to


def load(text: str, tmp_path: Path) -> config_mod.Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config_mod.load(path)


def test_absent_section_is_the_embedded_default(tmp_path: Path) -> None:
    cfg = load('data_dir = "d"\n', tmp_path)
    assert cfg.cluster is None and not cfg.clustered
    empty = load("[cluster]\n", tmp_path)  # PRODUCT.md: absent or nats = [] is embedded
    assert empty.cluster is not None and not empty.clustered


def test_replicas_default_to_three_and_fewer_only_when_written(tmp_path: Path) -> None:
    cfg = load(f'[cluster]\nnats = ["nats://127.0.0.1:4222"]\npostgres = "{PG}"\n', tmp_path)
    assert cfg.clustered and cfg.cluster is not None
    assert cfg.cluster.replicas is None and cfg.cluster.stream_replicas == 3
    one = load(f'[cluster]\nnats = ["nats://h:4222"]\npostgres = "{PG}"\nreplicas = 1\n', tmp_path)
    assert one.cluster is not None and one.cluster.stream_replicas == 1
    # the node hands its config to its worker as data: "not written" survives the trip
    again = config_mod.from_dict(config_mod.to_dict(cfg))
    assert again.cluster is not None and again.cluster.replicas is None


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('nats = ["nats://127.0.0.1:4222"]', "cluster.postgres", "needs PostgreSQL"),
        (f'postgres = "{PG}"', "cluster.nats", "needs NATS"),
        (f'nats = ["127.0.0.1:4222"]\npostgres = "{PG}"', "cluster.nats", "not a NATS URL"),
        ('nats = ["nats://h:4222"]\npostgres = "mysql://h/db"', "cluster.postgres", "PostgreSQL"),
        (f"{BOTH}\nreplicas = 0", "cluster.replicas", "1 to 5"),
        (f"{BOTH}\nreplicas = 6", "cluster.replicas", "1 to 5"),
        (f'{BOTH}\ndatacenter = "a b"', "cluster.datacenter",
         "letters"),
        ("nodes = 3", "cluster.nodes", "unknown key"),
    ],
)  # fmt: skip
def test_bad_cluster_settings_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(config_mod.ConfigError) as err:
        load(f"[cluster]\n{body}\n", tmp_path)
    assert f"'{key}'" in str(err.value) and words in str(err.value)


@pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")
def test_a_node_refuses_three_replicas_on_one_nats_server(tmp_path: Path) -> None:
    with nats_cluster(1) as nc:
        path = tmp_path / "c.toml"
        path.write_text(
            f'data_dir = "{tmp_path / "data"}"\n[http]\nlisten = "127.0.0.1:0"\n'
            f'[smtp]\nlisten = "127.0.0.1:0"\n'
            f'[cluster]\nnats = ["{nc.urls[0]}"]\npostgres = "postgresql://nobody@127.0.0.1:1/x"\n'
        )
        out = subprocess.run(
            postline_cmd("serve", "--config", str(path)), capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1, out.stderr
    assert "replicas is 3" in out.stderr and "replicas = 1 explicitly" in out.stderr


def test_queues_spread_over_the_nodes() -> None:
    nodes = {"n1", "n2", "n3"}
    owners = collections.Counter(owner(nodes, "t", f"d{i}.example") for i in range(3000))
    assert set(owners) == nodes and min(owners.values()) > 800


@given(
    st.sets(st.text(alphabet="abcdef0123456789", min_size=1, max_size=12), min_size=2, max_size=6),
    st.text(max_size=20),
    st.text(max_size=40),
)
def test_a_node_leaving_moves_only_its_own_queues(nodes: set[str], tenant: str, dom: str) -> None:
    before = owner(nodes, tenant, dom)
    assert before in nodes and owner(set(sorted(nodes)), tenant, dom) == before
    gone = sorted(nodes)[0]
    after = owner(nodes - {gone}, tenant, dom)
    assert after == before or before == gone


def test_cluster_audit_says_what_it_cannot_reach(tmp_path: Path) -> None:
    """``postline audit`` in cluster mode: an unreachable PostgreSQL or NATS, or a database
    no node has set up, is one line naming it, not a traceback."""

    def audit(nats: str, dsn: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "d").mkdir(exist_ok=True)
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'data_dir = "{tmp_path / "d"}"\n[cluster]\nnats = ["{nats}"]\n'
            f'postgres = "{dsn}"\ndatacenter = "dc1"\nreplicas = 1\n'
        )
        return subprocess.run(
            postline_cmd("audit", "--config", str(cfg)), capture_output=True, text=True, timeout=60
        )

    dead = "nats://127.0.0.1:9"  # the discard port: nothing listens on loopback
    out = audit(dead, "postgresql://postgres@127.0.0.1:9/x")
    assert out.returncode == 1 and "cannot connect to PostgreSQL" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    with fresh_database(admin_dsn(os.environ)) as dsn:
        out = audit(dead, dsn)
        assert out.returncode == 1 and "no Postline tables" in out.stderr, out.stderr
        import asyncio

        from postline.backends.postgres.migrate import migrate_dsn

        asyncio.run(migrate_dsn(dsn))
        out = audit(dead, dsn)
        assert out.returncode == 1 and "cannot reach NATS" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_failover_says_when_this_datacenters_nats_is_unreachable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}"\n[cluster]\nnats = ["nats://127.0.0.1:9"]\n'
        f'postgres = "{PG}"\ndatacenter = "dc1"\nreplicas = 1\n'
    )
    out = subprocess.run(
        postline_cmd("failover", "--from", "dc2", "--config", str(cfg)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "cannot reach this datacenter's NATS" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
