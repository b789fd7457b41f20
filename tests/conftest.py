"""Shared fixtures: real nodes on loopback, a small HTTP client."""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from postline.testing.dns_server import FakeDnsServer
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import NatsCluster, nats_cluster
from postline.testing.node import NodeProcess, stop_all


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def simple_mail(to: str = "bob@example.com", **extra: Any) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": "alice@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi Bob"}],
    }
    mail.update(extra)
    return mail


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    nodes: list[NodeProcess] = []

    def make(config: dict[str, Any] | None = None, name: str = "node") -> NodeProcess:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        node = NodeProcess(workdir, config)
        nodes.append(node)
        return node

    yield make
    stop_all(nodes)


@pytest.fixture
def fake_mx() -> Iterator[FakeSmtpServer]:
    """The scriptable destination MTA on loopback (steered by the recipient's local part)."""
    with running_in_thread(FakeSmtpServer()) as server:
        yield server


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsCluster]:
    """One nats-server with JetStream on a free loopback port, for a test module."""
    with nats_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def dns_server() -> Iterator[FakeDnsServer]:
    """A DNS server on loopback (UDP and TCP) whose zone the test sets."""
    with FakeDnsServer() as server:
        yield server


@pytest.fixture
def accept_node(node_factory: Any) -> NodeProcess:
    """A node that accepts and spools but does not deliver."""
    node: NodeProcess = node_factory({"delivery": {"enabled": False}}).start()
    return node


@dataclass
class SpoolSnapshot:
    messages: int
    bodies: int
    queued: int  # pending deliveries: waiting, deferred or leased
    events: list[dict[str, Any]]
    inflight: int = 0  # leased (handed to the delivery engine) and not settled

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def spool_snapshot(data_dir: Path) -> SpoolSnapshot:
    """Read the node's spool from outside the node (WAL readers do not block it)."""
    import asyncio

    from postline.backends.sqlite.spool import open_sqlite_spool
    from postline.config import SpoolConfig
    from postline.model.events import event_json

    async def read() -> SpoolSnapshot:
        spool = await open_sqlite_spool(str(data_dir), SpoolConfig(), recover=False)
        try:
            # Events first, counts second: an event and its state change commit together,
            # so any event seen here is already reflected in the counts read after it.
            events = []
            after = 0
            while True:
                chunk = await spool.read(after, 10_000)
                if not chunk:
                    break
                events += [event_json(rec) for _, rec in chunk]
                after = chunk[-1][0]
            counts = await spool.counts()
            pending = counts.queued + counts.deferred + counts.inflight
            return SpoolSnapshot(counts.messages, counts.bodies, pending, events, counts.inflight)
        finally:
            await spool.close()

    return asyncio.run(read())


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of the given size in MB: the only way to fill a disk for real (skips
    where mounting needs root and there is none)."""
    mounts: list[Path] = []

    def mount(size_mb: int) -> Path:
        mnt = tmp_path / f"fs{len(mounts)}"
        mnt.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
