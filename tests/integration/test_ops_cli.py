"""The operator's commands against a real node: status, messages show, queue, suppressions.

A node delivers to the fake destination, which defers ``450-...@`` recipients; retries are
an hour away (``retry_min = "1h"``), so anything that happens sooner is the command's doing.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import spool_snapshot
from tests.integration.test_delivery import send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess, postline_cmd

HOUR = 3600.0


def deferring(port: int, level: str = "warning") -> dict[str, Any]:
    return {
        "delivery": {
            "routes": {"*": f"127.0.0.1:{port}"},
            "retry_min": "1h",
            "retry_max": "2h",
            "max_age": "3h",
            "shaping": {"connect_timeout": "2s", "command_timeout": "2s", "data_timeout": "2s"},
        },
        "log": {"level": level},
    }


def cli(node: NodeProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = postline_cmd(*args, "--config", str(node.config_path))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin)


def cli_json(node: NodeProcess, *args: str) -> Any:
    out = cli(node, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def deferred_node(node_factory: Any, fake_mx: FakeSmtpServer, level: str = "warning") -> Any:
    """A node with two recipients deferred at later.test and one delivered at now.test."""
    node = node_factory(deferring(fake_mx.port, level)).start()
    key = node.create_key()
    x_id = send(node, key, "450-a@later.test", "450-b@later.test", "bob@now.test")
    snap = wait_for(node, lambda s: len(s.of_type("deferred")) == 2 and s.queued == 2)
    assert len(snap.of_type("deferred")) == 2, node.log_tail()
    return node, key, x_id


def test_status_shows_the_deferred_destination(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node, _, _ = deferred_node(node_factory, fake_mx)
    st = cli_json(node, "status")
    assert st["node"]["running"] and st["node"]["pid"] == node.proc.pid
    assert st["node"]["listeners"]["http"] == f"127.0.0.1:{node.http_port}"
    assert st["node"]["listeners"]["smtp"] == f"127.0.0.1:{node.smtp_port}"
    (dest,) = st["destinations"]
    assert dest["domain"] == "later.test" and dest["total"] == 2 and dest["deferred"] == 2
    assert 0 <= dest["oldest_age"] < 60 and dest["ages_minutes"]["5"] == 2
    assert dest["next_retry"] > time.time() + HOUR / 2
    assert st["queue"]["total"] == 2 and st["totals"]["delivered"] == 1
    text = cli(node, "status")
    assert text.returncode == 0
    assert "running" in text.stdout and "later.test" in text.stdout


def test_messages_show_has_the_deferral_and_its_reply(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node, _, x_id = deferred_node(node_factory, fake_mx)
    shown = cli_json(node, "messages", "show", x_id)
    by = {r["email"]: r for r in shown["recipients"]}
    deferred = by["450-a@later.test"]
    assert deferred["state"] == "deferred" and deferred["attempts"] == 1
    assert deferred["next_retry"] > time.time() + HOUR / 2
    assert deferred["history"][-1]["reply"].startswith("450 4.2.0")
    assert by["bob@now.test"]["state"] == "delivered"
    kinds = [e["event"] for e in shown["events"]]
    assert kinds[:3] == ["processed"] * 3 and sorted(kinds[3:]) == ["deferred"] * 2 + ["delivered"]
    one = cli_json(node, "messages", "show", f"{x_id}.pl1.2")  # one personalization
    assert [r["email"] for r in one["recipients"]] == ["bob@now.test"]
    text = cli(node, "messages", "show", x_id).stdout
    assert "450 4.2.0" in text and "delivered" in text
    missing = cli(node, "messages", "show", "no-such-id")
    assert missing.returncode == 1 and "no message 'no-such-id'" in missing.stderr


def test_flush_makes_the_node_retry_now(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node, _, x_id = deferred_node(node_factory, fake_mx)
    seen = fake_mx.replies[450]
    out = cli(node, "queue", "flush", "--domain", "later.test")
    assert out.returncode == 0, out.stderr
    assert "2 deferred deliveries to later.test made due now; the node retries" in out.stdout
    assert eventually(lambda: fake_mx.replies[450] >= seen + 2), "no retry after the flush"
    assert eventually(
        lambda: all(
            r["attempts"] == 2
            for r in cli_json(node, "messages", "show", x_id)["recipients"]
            if r["email"].startswith("450-")
        )
    )


def test_purge_asks_then_drops_with_events(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node, _, _ = deferred_node(node_factory, fake_mx, level="info")
    refused = cli(node, "queue", "purge", "--domain", "later.test", stdin="y\n")
    assert refused.returncode == 1 and "nothing was purged" in refused.stderr
    assert "Type 'later.test' to confirm" in refused.stderr
    assert cli_json(node, "queue")[0]["total"] == 2
    out = cli(node, "queue", "purge", "--domain", "later.test", stdin="later.test\n")
    assert out.returncode == 0, out.stderr
    assert "purged 2 deliveries to later.test" in out.stdout
    assert cli_json(node, "queue") == []
    snap = spool_snapshot(node.data_dir)
    dropped = snap.of_type("dropped")
    assert sorted(e["email"] for e in dropped) == ["450-a@later.test", "450-b@later.test"]
    assert all(e["reason"] == "Purged by operator" and e["sg_message_id"] for e in dropped)
    assert snap.queued == 0 and snap.messages == 0 and snap.bodies == 0
    assert eventually(lambda: node.log_tail(100_000).count('"reply":"Purged by operator"') == 2)
    again = cli(node, "queue", "purge", "--domain", "later.test", "--yes")
    assert again.returncode == 0 and "nothing purged" in again.stdout


def test_purge_takes_waiting_work_back_from_the_node(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """One session is stuck on a recipient that gets no reply; the other messages to the
    domain wait in the node's ready window (leased). The purge takes them back: none of
    them reaches the destination, and the stuck one finishes its attempt."""
    config = deferring(fake_mx.port)
    config["delivery"]["shaping"] = {"max_connections": 1, "command_timeout": "3s"}
    node = node_factory(config).start()
    key = node.create_key()
    send(node, key, "stall-0@slow.test", *(f"r{i}@slow.test" for i in range(5)))
    assert eventually(lambda: cli_json(node, "queue")[0]["inflight"] == 6), node.log_tail()
    purged = cli_json(node, "queue", "purge", "--domain", "slow.test", "--yes")
    assert purged == {"purged": 5, "node": True, "inflight": 1}
    snap = wait_for(node, lambda s: len(s.of_type("deferred")) == 1)
    assert sorted(e["email"] for e in snap.of_type("dropped")) == [
        f"r{i}@slow.test" for i in range(5)
    ]
    assert [e["email"] for e in snap.of_type("deferred")] == ["stall-0@slow.test"]
    assert not fake_mx.transactions and snap.queued == 1


def test_without_a_node_flush_and_purge_act_on_the_spool(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node, _, x_id = deferred_node(node_factory, fake_mx)
    assert node.stop() == 0
    assert cli_json(node, "status")["node"]["running"] is False
    out = cli(node, "queue", "flush")
    assert out.returncode == 0 and "no node runs" in out.stdout
    (dest,) = cli_json(node, "queue", "list")
    assert dest["due"] == 2 and dest["deferred"] == 0
    purged = cli_json(node, "queue", "purge", "--message", f"{x_id}.pl1.0", "--yes")
    assert purged == {"purged": 1, "node": False, "inflight": 0}
    listing = cli_json(node, "queue", "list", "--domain", "later.test")
    assert [d["recipient"] for d in listing["deliveries"]] == ["450-b@later.test"]
    seen = fake_mx.replies[450]
    node.start()  # the flushed delivery is due: retried at start, not in an hour
    assert eventually(lambda: fake_mx.replies[450] > seen)


def test_suppressions_list_and_remove(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(deferring(fake_mx.port)).start()
    key = node.create_key()
    send(node, key, "550-gone@x.test")
    wait_for(node, lambda s: bool(s.of_type("bounce")))
    (row,) = cli_json(node, "suppressions", "list")
    assert row["email"] == "550-gone@x.test" and row["list"] == "bounces"
    assert row["tenant"] == "default" and row["status"] == "5.1.1"
    out = cli(node, "suppressions", "remove", "550-Gone@x.test")
    assert out.returncode == 0 and "removed 550-gone@x.test from bounces" in out.stdout
    assert cli_json(node, "suppressions", "list") == []
    again = cli(node, "suppressions", "remove", "550-gone@x.test")
    assert again.returncode == 1 and "not on any suppression list" in again.stderr
    send(node, key, "550-gone@x.test")  # accepted again, not dropped
    snap = spool_snapshot(node.data_dir)
    assert len(snap.of_type("processed")) == 2 and not snap.of_type("dropped")


def test_a_node_without_its_control_socket_runs_and_is_not_acted_behind(
    node_factory: Any, tmp_path: Path
) -> None:
    node = node_factory({"delivery": {"enabled": False}})
    (node.data_dir / "control.sock").mkdir(parents=True)  # the socket cannot be made
    node.start()
    st = cli_json(node, "status")
    assert not st["node"]["running"] and st["node"]["pid_alive"]
    assert st["node"]["pid"] == node.proc.pid
    out = cli(node, "queue", "flush")
    assert out.returncode == 1 and "does not answer" in out.stderr and "Traceback" not in out.stderr


def test_errors_say_where_they_looked(tmp_path: Path) -> None:
    cfg = tmp_path / "postline.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "nowhere"}"\n')
    out = subprocess.run(
        postline_cmd("status", "--config", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert f"no data directory at {tmp_path / 'nowhere'}" in out.stderr
    assert str(cfg) in out.stderr
    (tmp_path / "nowhere").mkdir()
    out = subprocess.run(
        postline_cmd("queue", "--config", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "no spool at" in out.stderr and "postline serve" in out.stderr


def test_version_and_help() -> None:
    run = subprocess.run(postline_cmd("--version"), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "postline 0.1.0"
    for cmd in ("status", "queue", "suppressions"):
        helped = subprocess.run(
            postline_cmd(cmd, "--help"), capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0 and "examples:" in helped.stdout
