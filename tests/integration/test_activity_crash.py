"""Kill -9 while the activity consumer indexes: after a restart nothing is missing.

A sender floods the node (100 personalizations a request, so 100 processed events a
request) while the activity consumer loads them; the node is killed with SIGKILL once the
store holds some events and the log is ahead of it. After a restart and catch-up, every
offset of the event log (spool.db) is in activity.duckdb; duplicates would be allowed,
and are counted (the offset is stored with the rows, so there should be none).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from tests.conftest import call, simple_mail

from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.testing.node import NodeProcess
from postline.testing.scrape import scrape

PER_REQUEST = 100


def flood(node: NodeProcess, key: str, stop: threading.Event, accepted: list[int]) -> None:
    mail = simple_mail()
    mail["personalizations"] = [
        {"to": [{"email": f"r{i}@example.com"}]} for i in range(PER_REQUEST)
    ]
    while not stop.is_set():
        try:
            r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
        except OSError:  # the node is gone
            return
        if r.status == 202:
            accepted.append(PER_REQUEST)


def log_offsets(data_dir: Path) -> list[int]:
    async def read() -> list[int]:
        spool = await open_sqlite_spool(str(data_dir), SpoolConfig(), recover=False)
        try:
            offsets: list[int] = []
            while chunk := await spool.read(offsets[-1] if offsets else 0, 50_000):
                offsets += [o for o, _ in chunk]
            return offsets
        finally:
            await spool.close()

    return asyncio.run(read())


def wait_metrics(
    node: NodeProcess, done: Callable[[dict[str, float]], bool], timeout: float = 30
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m: dict[str, float] = scrape(node.http_port)
        if done(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.02)


def test_kill_9_while_indexing_loses_nothing(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    key = node.create_key()
    stop, accepted = threading.Event(), list[int]()
    sender = threading.Thread(target=flood, args=(node, key, stop, accepted), daemon=True)
    sender.start()
    try:
        m = wait_metrics(
            node,
            lambda m: (
                m.get("activity_rows_stored", 0) >= 5000
                and m["event_log_head"] > m["activity_rows_stored"]
            ),
        )
        assert m.get("activity_rows_stored", 0) >= 5000, node.log_tail()
        node.kill()
    finally:
        stop.set()
        sender.join(30)
    node.start()
    # (the worker's metrics appear once it answers: the node does not wait for it)
    caught_up = wait_metrics(
        node, lambda m: m.get("activity_rows", 0) >= m.get("event_log_head", 0) > 0
    )
    assert caught_up["activity_rows"] >= caught_up["event_log_head"], node.log_tail()
    node.stop()

    offsets = log_offsets(node.data_dir)
    assert len(offsets) >= sum(accepted) >= 5000
    conn = duckdb.connect(str(node.data_dir / "activity.duckdb"), read_only=True)
    try:
        stored = dict(conn.execute('SELECT "offset", count(*) FROM events GROUP BY 1').fetchall())
        (resume,) = conn.execute('SELECT "offset" FROM consumer').fetchone() or (0,)
    finally:
        conn.close()
    missing = [o for o in offsets if o not in stored]
    duplicates = sum(n - 1 for n in stored.values())
    print(f"log events {len(offsets)}, stored rows {sum(stored.values())}, dups {duplicates}")
    assert missing == []
    assert set(stored) == set(offsets) and resume == offsets[-1]
    assert duplicates == 0
