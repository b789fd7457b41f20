"""One node per data directory, and listeners bound before delivery starts.

A second ``postline serve`` on a live node's data_dir once recovered the spool, delivered
893 of 3,000 recipients a second time, failed to bind its port and then hung.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import call, simple_mail, spool_snapshot
from tests.integration.test_delivery import fast_config, wait_for

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess, postline_cmd

EXIT_WAIT = 20.0  # bound for a refused start to exit; it should take well under a second


def send_many(node: NodeProcess, key: str, n: int, per_request: int = 50) -> list[str]:
    rcpts = [f"user{i}@example.com" for i in range(n)]
    for i in range(0, n, per_request):
        mail = simple_mail()
        mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts[i : i + per_request]]
        r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
        assert r.status == 202, r.body
    return rcpts


def serve_once(
    tmp_path: Path, name: str, config: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run ``postline serve`` with ``config``; it is expected to exit on its own."""
    workdir = tmp_path / name
    workdir.mkdir()
    cfg_path = NodeProcess(workdir, config).config_path
    proc = subprocess.Popen(
        postline_cmd("serve", "--config", str(cfg_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=EXIT_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the refused node did not exit: {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("same_port", [True, False], ids=["same-port", "other-port"])
def test_second_node_on_a_data_dir_exits_and_nothing_is_delivered_twice(
    node_factory: Any, fake_mx: FakeSmtpServer, tmp_path: Path, same_port: bool
) -> None:
    config = fast_config(fake_mx.port, shaping={"max_connections": 2})
    first = node_factory(config).start()
    key = first.create_key()
    rcpts = send_many(first, key, 600)
    # The README's serve command run twice (same port), or with another port: either way
    # the second node must not touch the spool.
    port = first.http_port if same_port else 0
    second = {**config, "data_dir": str(first.data_dir), "http": {"listen": f"127.0.0.1:{port}"}}
    done = serve_once(tmp_path, "second", second)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"postline: another node (pid {first.proc.pid if first.proc else 0}) is running on "
        f"{first.data_dir}; stop it first or use another data_dir"
    ]
    snap = wait_for(first, lambda s: len(s.of_type("delivered")) == len(rcpts), timeout=60)
    assert len(snap.of_type("delivered")) == len(rcpts), first.log_tail()
    first.stop()
    got = Counter(r for t in fake_mx.transactions for r in t.rcpts)
    assert sorted(got) == sorted(rcpts)
    assert {n for n in got.values()} == {1}, [r for r, n in got.items() if n > 1][:10]


def test_taken_http_port_exits_with_an_error_before_delivering(
    node_factory: Any, fake_mx: FakeSmtpServer, tmp_path: Path
) -> None:
    spooler = node_factory({"delivery": {"enabled": False}}).start()
    key = spooler.create_key()
    send_many(spooler, key, 20, per_request=5)
    assert spooler.stop() == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {
            **fast_config(fake_mx.port),
            "data_dir": str(spooler.data_dir),
            "http": {"listen": f"127.0.0.1:{port}"},
        }
        done = serve_once(tmp_path, "blocked", config)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postline: cannot listen on 127.0.0.1:"), lines
    assert "http.listen" in lines[0]
    time.sleep(0.5)  # a delivery session started by the failed node would show up by now
    assert fake_mx.connections == 0
    assert spool_snapshot(spooler.data_dir).queued == 20
    # The data dir is free again: a node on another port delivers the 20.
    node = node_factory({**fast_config(fake_mx.port), "data_dir": str(spooler.data_dir)}, "again")
    node.data_dir = spooler.data_dir
    node.start()
    snap = wait_for(node, lambda s: s.queued == 0 and len(s.of_type("delivered")) == 20)
    assert len(snap.of_type("delivered")) == 20, node.log_tail()


def test_keys_commands_work_while_a_node_runs(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    key = node.create_key(scopes="mail.send")  # `postline keys create` beside the live node
    assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    listed = subprocess.run(
        postline_cmd("keys", "list", "--config", str(node.config_path)),
        capture_output=True,
        text=True,
        timeout=EXIT_WAIT,
    )
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.strip().splitlines()) == 1
