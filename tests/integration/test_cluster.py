"""Cluster mode end to end: two real ``postline serve`` nodes (each its own data dir, the
same ``[cluster]``) on a 3-node NATS JetStream cluster and one fresh PostgreSQL database,
delivering to the fake MX. One cluster for the module; each test uses recipients of its
own (``<test>-...@``) and counts only those at the fake MX."""

from __future__ import annotations

import collections
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import call, simple_mail

from postline.runtime import CLUSTER_RESCAN
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import NatsCluster, nats_cluster, server_binary
from postline.testing.node import NodeProcess, postline_cmd, stop_all
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")


@dataclass
class Env:
    nats: NatsCluster
    dsn: str
    mx: FakeSmtpServer
    a: NodeProcess
    b: NodeProcess

    def delivered(self, prefix: str) -> list[str]:
        return [r for t in self.mx.transactions for r in t.rcpts if r.startswith(prefix)]


def cluster_config(urls: list[str], dsn: str, mx_port: int) -> dict[str, object]:
    return {
        "cluster": {"nats": urls, "postgres": dsn, "datacenter": "dc1"},
        "delivery": {
            "routes": {"*": f"127.0.0.1:{mx_port}"},
            "retry_min": "500ms",
            "retry_max": "1s",
            "max_age": "60s",
        },
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cluster")
    with (
        nats_cluster(3) as nc,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer()) as mx,
    ):
        cfg = cluster_config(nc.urls, dsn, mx.port)
        nodes = []
        try:
            for name in ("a", "b"):
                (root / name).mkdir()
                nodes.append(NodeProcess(root / name, cfg).start(60))
            yield Env(nc, dsn, mx, *nodes)
        finally:
            stop_all(nodes)


def send(node: NodeProcess, key: str, rcpts: list[str], **extra: Any) -> int:
    mail = simple_mail(**extra)
    mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
    return call(node.http_port, "POST", "/v3/mail/send", mail, key=key).status


def wait_until(done: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)


def test_a_key_created_against_node_a_works_on_node_b(env: Env) -> None:
    key = env.a.create_key()  # `postline keys create --config <a's config>`
    assert key.startswith("SG.")
    assert send(env.b, key, ["keys-1@example.com"]) == 202
    assert send(env.b, "SG.nosuch.key", ["keys-2@example.com"]) == 401
    key_id = key.split(".")[1]
    subprocess.run(
        # "--": a key id may begin with "-" (base64url), which argparse takes for an option
        postline_cmd("keys", "revoke", "--config", str(env.a.config_path), "--", key_id),
        check=True,
    )
    # revoked in PostgreSQL: node B hears it (LISTEN/NOTIFY) and refuses the key
    wait_until(lambda: send(env.b, key, ["keys-3@example.com"]) == 401, 10.0)
    assert send(env.b, key, ["keys-3@example.com"]) == 401
    listed = subprocess.run(
        postline_cmd("keys", "list", "--config", str(env.b.config_path)),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert key_id in listed and "revoked" in listed


def test_mail_accepted_on_both_nodes_is_delivered_once_per_recipient(env: Env) -> None:
    key = env.a.create_key()
    expected = []
    for i in range(20):  # alternate nodes; 3 recipients a request, over 4 domains
        node = env.a if i % 2 == 0 else env.b
        rcpts = [f"once-{i}-{j}@d{(i + j) % 4}.example" for j in range(3)]
        assert send(node, key, rcpts) == 202
        expected += rcpts
    wait_until(lambda: len(env.delivered("once-")) >= len(expected))
    # both nodes look at every queue (rescan): give a second delivery time to show up
    time.sleep(2 * CLUSTER_RESCAN + 1)
    got = collections.Counter(env.delivered("once-"))
    assert sorted(got) == sorted(expected), "missing: " + str(set(expected) - set(got))
    assert [r for r, n in got.items() if n > 1] == []
    # both workers read the whole shared event log under their own consumer names
    for node in (env.a, env.b):
        wait_until(lambda n=node: _consumed(n, "stats") >= 2 * len(expected), 15.0)
        assert _consumed(node, "stats") >= 2 * len(expected), node.log_tail()


def _consumed(node: NodeProcess, consumer: str) -> float:
    text = call(node.http_port, "GET", "/metrics").body.decode()
    m = re.search(rf'consumer_events_total\{{consumer="{consumer}"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_suppressions_are_shared_by_the_nodes(env: Env) -> None:
    """The lists live in PostgreSQL (cluster/suppressions.py): what one node's API or
    delivery lists, the other node's accept drops, through both doors."""
    key = env.a.create_key()
    unsub, member, bounced = "sup-unsub@example.com", "sup-member@x.example", "550-sup@b.example"
    # a global unsubscribe added through node A ...
    added = call(env.a.http_port, "POST", "/v3/asm/suppressions/global",
                 {"recipient_emails": [unsub]}, key=key)  # fmt: skip
    assert added.status == 201, added.body
    got = call(env.b.http_port, "GET", f"/v3/asm/suppressions/global/{unsub}", key=key)
    assert got.status == 200 and got.json() == {"recipient_email": unsub}
    # ... an unsubscribe group and its member, through node A too
    group = call(env.a.http_port, "POST", "/v3/asm/groups", {"name": "news"}, key=key)
    assert group.status == 201, group.body
    gid = group.json()["id"]
    path = f"/v3/asm/groups/{gid}/suppressions"
    assert (
        call(env.a.http_port, "POST", path, {"recipient_emails": [member]}, key=key).status == 201
    )
    dropped_before = _metric(env.b, "postline_dropped_recipients_total")
    # node B drops them at accept: HTTP ...
    assert send(env.b, key, [unsub, "sup-http@example.com"]) == 202
    assert send(env.b, key, [member, "sup-group@x.example"], asm={"group_id": gid}) == 202
    assert send(env.b, key, ["sup-x@x.example"], asm={"group_id": gid + 1000}) == 400
    # ... and the SMTP relay (the spool drops them: drop_suppressed)
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "alice@example.com", "hi"
    msg["To"] = f"{unsub}, sup-relay@example.com"
    msg.set_content("hello")
    with smtplib.SMTP("127.0.0.1", env.b.smtp_port, timeout=10) as smtp:
        smtp.login("apikey", key)
        smtp.send_message(msg)
        grouped = EmailMessage()
        grouped["From"], grouped["Subject"] = msg["From"], "g"
        grouped["To"] = "sup-unknown-group@x.example"
        grouped["X-SMTPAPI"] = json.dumps({"asm_group_id": gid + 1000})
        grouped.set_content("hello")
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.send_message(grouped)
        assert err.value.smtp_code == 550 and b"no unsubscribe group" in err.value.smtp_error
    assert _metric(env.b, "postline_dropped_recipients_total") - dropped_before == 3
    # a hard bounce of mail accepted by node B is on node A's bounce list ...
    assert send(env.b, key, [bounced]) == 202

    def listed() -> list[str]:
        r = call(env.a.http_port, "GET", "/v3/suppression/bounces?email=550-sup", key=key)
        return [e["email"] for e in r.json()] if r.status == 200 else []

    wait_until(lambda: listed() == [bounced])
    assert listed() == [bounced]
    (entry,) = call(env.a.http_port, "GET", f"/v3/suppression/bounces/{bounced}", key=key).json()
    assert entry["status"].startswith("5.") and entry["reason"]
    # ... and dropped by node A from then on, until deleted from B's API
    assert send(env.a, key, [bounced]) == 202
    assert _metric(env.a, "postline_dropped_recipients_total") >= 1
    deleted = call(env.b.http_port, "DELETE", f"/v3/suppression/bounces/{bounced}", key=key)
    assert deleted.status == 204
    assert listed() == []
    expected = ["sup-http@example.com", "sup-group@x.example", "sup-relay@example.com"]
    wait_until(lambda: len(env.delivered("sup-")) >= len(expected))
    time.sleep(2 * CLUSTER_RESCAN)  # a dropped recipient delivered late would show now
    assert sorted(env.delivered("sup-")) == sorted(expected)


def _metric(node: NodeProcess, name: str) -> float:
    text = call(node.http_port, "GET", "/metrics").body.decode()
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_status_says_cluster_mode(env: Env) -> None:
    cmd = [*postline_cmd("status"), "--config", str(env.a.config_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cluster mode, datacenter dc1, replicas 3" in out.stdout
    assert "spool jetstream, events jetstream, keys postgresql" in out.stdout
    report = json.loads(
        subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True).stdout
    )
    assert report["node"]["running"] is True
    streams = report["nats"]["streams"]
    assert [s["name"] for s in streams] == ["PL_dc1_SPOOL", "PL_dc1_MSGS", "PL_dc1_EVENTS"]
    assert all(s["replicas"] == 3 and len(s["peers"]) == 2 for s in streams)

    # the pipeline's readers each have a durable consumer on the events stream (made at
    # their first read, right after the node starts)
    def consumers() -> list[str]:
        got = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True)
        return [c["name"] for c in json.loads(got.stdout)["nats"]["consumers"]]

    def both(names: list[str]) -> bool:
        return any("-activity_" in n for n in names) and any("-stats_" in n for n in names)

    wait_until(lambda: both(consumers()))
    assert both(consumers()), consumers()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "EVENT CONSUMER" in again.stdout


def test_embedded_only_commands_say_what_to_use_in_cluster_mode(env: Env) -> None:
    for args in (["queue"], ["queue", "flush"], ["queue", "purge", "--domain", "x.example"],
                 ["messages", "show", "nobody@x.example"], ["suppressions", "list"]):  # fmt: skip
        out = subprocess.run(
            postline_cmd(*args, "--config", str(env.a.config_path)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "cluster mode" in out.stderr and "postline status" in out.stderr, out.stderr


def test_status_names_an_unreachable_nats(tmp_path: Path, env: Env) -> None:
    cfg = tmp_path / "c.toml"
    (tmp_path / "data").mkdir()
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[cluster]\nnats = ["nats://127.0.0.1:1"]\n'
        f'postgres = "{env.dsn}"\n'
    )
    cmd = [sys.executable, "-m", "postline.cluster.status", "--config", str(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "UNREACHABLE" in out.stdout


def test_status_and_metrics_show_nodes_queues_and_lags(env: Env) -> None:
    """Any node answers for the whole cluster: both live nodes, a destination's queue
    (depth, oldest, owner) whichever node accepted its mail, and the consumers' lags."""
    key = env.a.create_key()
    rcpts = [f"450-status-{i}@status-queue.example" for i in range(3)]  # greylisted: waits
    assert send(env.a, key, rcpts) == 202
    cmd = [*postline_cmd("status"), "--config", str(env.b.config_path)]

    def report() -> dict[str, Any]:
        out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
        got: dict[str, Any] = json.loads(out.stdout)
        return got

    def queue(r: dict[str, Any]) -> dict[str, Any] | None:
        c = r.get("cluster") or {}
        return next((q for q in c.get("queues", []) if q["domain"] == "status-queue.example"), None)

    r = report()
    deadline = time.monotonic() + 30
    while (queue(r) is None or len(r["cluster"]["nodes"]) < 2) and time.monotonic() < deadline:
        time.sleep(0.5)
        r = report()
    q = queue(r)
    assert q is not None, r.get("cluster")
    assert q["depth"] == 3 and q["owner"] in r["cluster"]["nodes"], q
    assert len(r["cluster"]["nodes"]) == 2
    assert r["lags"] and all("events" in v for v in r["lags"].values()), r["lags"]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert "2 live:" in text and "status-queue.example" in text and "CONSUMER" in text, text
    metrics = call(env.a.http_port, "GET", "/metrics").body.decode()
    assert "postline_cluster_nodes 2" in metrics
    assert re.search(
        r'postline_cluster_queue_depth\{tenant="[^"]*",domain="status-queue.example"\} 3',
        metrics,
    ), metrics


def test_a_bounce_read_on_another_node_counts_for_the_whole_cluster(env: Env) -> None:
    """A DSN for mail node A sent reaches the MTA on node B's machine: ``postline inbound``
    there verifies A's VERP address (one key for the cluster) and records into the cluster:
    the bounce list every node reads and the shared activity store."""
    from tests.integration.test_inbound_bounces import golden_dsn

    key = env.a.create_key(tenant="acme")
    rcpt = "late-bounce@inbound.example"
    assert send(env.a, key, [rcpt]) == 202
    wait_until(lambda: rcpt in env.delivered("late-bounce"))
    (tx,) = [t for t in env.mx.transactions if rcpt in t.rcpts]
    assert tx.mail_from.startswith("bounces+"), tx.mail_from
    out = subprocess.run(
        postline_cmd("inbound", "--config", str(env.b.config_path)),
        input=golden_dsn(tx.mail_from, rcpt), capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

    def listed(node: NodeProcess) -> list[str]:
        r = call(node.http_port, "GET", f"/v3/suppression/bounces/{rcpt}", key=key)
        return [e["email"] for e in r.json()] if r.status == 200 else []

    assert listed(env.a) == [rcpt] and listed(env.b) == [rcpt]
    wait_until(lambda: "bounce" in _stored_events(env.dsn, rcpt))
    assert "bounce" in _stored_events(env.dsn, rcpt)  # the event log reached the store
    assert send(env.b, key, [rcpt]) == 202  # and the address is dropped from now on
    time.sleep(2 * CLUSTER_RESCAN)
    assert env.delivered("late-bounce") == [rcpt]


def _stored_events(dsn: str, email: str) -> list[str]:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    async def fetch() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT event FROM activity_events WHERE to_email = $1", email)
            return [r[0] for r in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_audit_reads_the_cluster_and_finds_a_lost_delivery(env: Env) -> None:
    key = env.a.create_key()
    since, deferrals = time.time() - 1, env.mx.replies[450]
    rcpts = ["audit-1@example.com", "audit-2@example.org", "450-audit@example.com"]
    assert send(env.a, key, rcpts[:2]) == 202 and send(env.b, key, rcpts[2:]) == 202
    wait_until(lambda: len(env.delivered("audit-")) == 2)
    wait_until(lambda: env.mx.replies[450] > deferrals, 10.0)  # the 450 was tried

    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = postline_cmd("audit", "--config", str(env.b.config_path), "--since", str(since))
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)

    out = audit("--json")
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads(out.stdout)
    # one message per personalization (send() gives each recipient its own)
    assert rep["ok"] is True and (rep["messages"], rep["recipients"]) == (3, 3), rep
    assert rep["terminal"] == {"delivered": 2} and rep["queued"] == 1, rep  # 450: retrying

    # The deferred delivery vanishes from the SPOOL stream (a tombstone nobody settled):
    # accepted, not terminal, no longer queued.
    assert _tombstone(env.a.config_path, "450-audit@example.com") == 1
    out = audit()
    assert out.returncode == 1, out.stdout + out.stderr
    broken = out.stdout.split("BROKEN", 1)[1]
    assert "450-audit@example.com: last event" in broken and "audit-1@" not in broken
    assert "FAILED" in out.stdout


def _tombstone(config_path: Path, rcpt: str) -> int:
    """Tombstone ``rcpt``'s deliveries in the SPOOL stream, as a lost write would leave
    them; how many there were."""
    import asyncio

    import nats
    from nats.js import api

    from postline import config as config_mod
    from postline.backends.jetstream.index import follow_deliveries
    from postline.backends.jetstream.records import GONE, Names
    from postline.cluster.backends import prefix

    cfg = config_mod.load(str(config_path))
    assert cfg.cluster is not None
    names = Names(prefix(cfg.cluster))

    async def run() -> int:
        nc = await nats.connect(cfg.cluster.nats)  # type: ignore[union-attr]
        try:
            js = nc.jetstream()
            subjects: dict[str, bool] = {}
            sub = await follow_deliveries(
                js, names, lambda s, d, m, st: subjects.update({m.subject: st is not None
                                                                and st.rcpt == rcpt}),
            )  # fmt: skip
            await sub.unsubscribe()
            hits = [s for s, live in subjects.items() if live]
            for subject in hits:
                ack = await js.publish(subject, b"", headers={GONE: "1"}, stream=names.spool)
                assert isinstance(ack, api.PubAck)
            return len(hits)
        finally:
            await nc.close()

    return asyncio.run(run())
