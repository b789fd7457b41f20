"""A full disk never wedges delivery, and a drained spool gives its disk back.

The node once let a burst of accepts fill the disk to 0 bytes (free space was looked at
once a second); then its own settles failed and delivery deadlocked. Real small tmpfs
mounts (as in test_durability.py), a real node, the fake destination on loopback.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import call, simple_mail
from tests.integration.test_delivery import fast_config, wait_for

from postline.backends.sqlite import schema
from postline.backends.sqlite.space import RESERVE_FILE
from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.backends.sqlite.writer import GroupCommitWriter
from postline.config import SpoolConfig
from postline.model import events as ev
from postline.spool.conformance import LEASE, T0, batch, message, outcome
from postline.spool.interface import Settlement, SpoolUnavailable
from postline.testing.fake_smtp import FakeSmtpServer

MB = 1024 * 1024


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def spool_bytes(data_dir: Path) -> int:
    files = [data_dir / "spool.db", data_dir / "spool.db-wal"]
    return sum(f.stat().st_size for f in files if f.exists())


class Flood:
    """Client threads sending one large mail per request as fast as answers come."""

    def __init__(self, port: int, key: str, mail: dict[str, Any], threads: int) -> None:
        self.body = json.dumps(mail).encode()
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.port = port
        self.accepted: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send) for _ in range(threads)]

    def __enter__(self) -> Flood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _send(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop.is_set():
                conn.request("POST", "/v3/mail/send", body=self.body, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                self.statuses[resp.status] += 1
                if resp.status == 202:
                    self.accepted.append(resp.getheader("X-Message-Id") or "")
                else:
                    time.sleep(0.005)
        finally:
            conn.close()


class FreeSpaceWatch:
    """Samples the free space of a filesystem every few ms; keeps the lowest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lowest = free(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> FreeSpaceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.lowest = min(self.lowest, free(self.path))
            time.sleep(0.002)


def test_flood_on_a_small_disk_refuses_early_and_delivery_never_wedges(
    node_factory: Any, fake_mx: FakeSmtpServer, tmpfs: Callable[[int], Path]
) -> None:
    fs = tmpfs(24)
    # Delivery slower than the flood (100 msg/s, ~6 MB/s): the spool fills up.
    config = fast_config(fake_mx.port, shaping={"max_connections": 2, "max_message_rate": 100})
    config["data_dir"] = str(fs / "data")
    config["spool"] = {"min_free_bytes": 4 * MB, "reserve_bytes": 4 * MB}
    node = node_factory(config)
    node.data_dir = fs / "data"
    node.start()
    key = node.create_key()
    big = simple_mail(content=[{"type": "text/plain", "value": "x" * 60_000}])
    with FreeSpaceWatch(fs) as watch, Flood(node.http_port, key, big, threads=6) as flood:
        deadline = time.monotonic() + 30
        while flood.statuses[503] < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # keep flooding while the spool is at its limit and draining
    accepted = len(flood.accepted)
    assert flood.statuses[503] >= 200, (flood.statuses, node.log_tail())
    assert set(flood.statuses) <= {202, 503}, flood.statuses
    # Everything acknowledged is delivered: nothing wedged.
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == accepted, timeout=90)
    assert len(snap.of_type("delivered")) == accepted, node.log_tail()
    assert snap.queued == 0
    # Space comes back (compaction, reserve allocated again): the node says it accepts.
    deadline = time.monotonic() + 30
    while call(node.http_port, "GET", "/healthz").status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert call(node.http_port, "GET", "/healthz").status == 200, node.log_tail()
    assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    # Refused early enough: the disk never filled, no spool write of delivery failed.
    assert watch.lowest > 2 * MB, watch.lowest
    log = node.log_tail(10**7)
    assert "outcomes held" not in log and "delivery paused" not in log
    assert "reserve released" not in log
    assert (fs / "data" / RESERVE_FILE).stat().st_size == 4 * MB


def test_a_drained_spool_gives_its_disk_back(
    node_factory: Any, fake_mx: FakeSmtpServer, tmp_path: Path
) -> None:
    spooler = node_factory({"delivery": {"enabled": False}}).start()
    start_size = spool_bytes(spooler.data_dir)
    key = spooler.create_key()
    content = [{"type": "text/plain", "value": os.urandom(150_000).hex()}]  # 300 KB each
    for i in range(40):
        mail = simple_mail(to=f"user{i}@example.com", content=content)
        assert call(spooler.http_port, "POST", "/v3/mail/send", mail, key=key).status == 202
    full_size = spool_bytes(spooler.data_dir)
    assert full_size > start_size + 10 * MB
    assert spooler.stop() == 0
    # The destination is back: a node that delivers drains the 40 messages.
    node = node_factory({**fast_config(fake_mx.port), "data_dir": str(spooler.data_dir)}, "b")
    node.data_dir = spooler.data_dir
    node.start()
    snap = wait_for(node, lambda s: s.queued == 0 and len(s.of_type("delivered")) == 40)
    assert len(snap.of_type("delivered")) == 40, node.log_tail()
    wal = node.data_dir / "spool.db-wal"

    def wal_bytes() -> int:
        return wal.stat().st_size if wal.exists() else 0

    # The writer truncates the WAL after each idle second; a small commit after that (a
    # consumer's offset, a retention pass) writes a few pages that the next idle second
    # takes back: wait for a moment when both are small.
    deadline = time.monotonic() + 30
    while (spool_bytes(node.data_dir) > start_size + MB or wal_bytes() > 0) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert spool_bytes(node.data_dir) <= start_size + MB, (start_size, full_size)
    assert wal_bytes() == 0


async def opened(data_dir: Path, **cfg: Any) -> SqliteSpool:
    return await open_sqlite_spool(str(data_dir), SpoolConfig(**cfg))


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\1" * 65536)
        except OSError:
            pass
    return filler


def test_a_burst_of_accepts_stops_at_the_floor(tmpfs: Callable[[int], Path]) -> None:
    """200 batches of 100 KB at once on 12 MB: far more than a statvfs a second sees."""
    fs = tmpfs(12)

    async def main() -> None:
        spool = await opened(fs / "data", min_free_bytes=4 * MB, reserve_bytes=0)
        body = os.urandom(100_000)
        batches = [batch(message(f"r{i}@d.example"), body=body) for i in range(200)]
        results = await asyncio.gather(*(spool.accept(b) for b in batches), return_exceptions=True)
        refused = [r for r in results if isinstance(r, SpoolUnavailable)]
        assert len(refused) + results.count(None) == 200, [r for r in results if r][:3]
        assert 0 < len(refused) < 200
        assert all("min_free_bytes" in r.reason for r in refused), refused[0].reason
        assert spool.statistics().full_batches == 0  # never even reached SQLITE_FULL
        assert free(fs) > 2 * MB
        await spool.close()

    asyncio.run(main())


def test_a_settle_on_a_full_disk_is_written_with_the_reserve(tmpfs: Callable[[int], Path]) -> None:
    fs = tmpfs(4)

    async def main() -> None:
        spool = await opened(fs / "data", min_free_bytes=0, reserve_bytes=MB)
        reserve = fs / "data" / RESERVE_FILE
        assert reserve.stat().st_size == MB
        await spool.accept(batch(*(message(f"r{i}@d.example") for i in range(50))))
        leases = await spool.lease("t1", "d.example", T0, 50, LEASE)
        filler = fill(fs)  # another process takes every byte left
        settles = [outcome(x, Settlement.DELIVERED) for x in leases]
        for s in settles:  # big events: the settle must grow the files
            assert s.event is not None
            s.event = ev.make_event(
                ev.DELIVERED,
                tenant="t1",
                email=s.lease.rcpt,
                ts=T0,
                sg_message_id=s.lease.sg_message_id,
                smtp_id="",
                extra={"response": "250 " + os.urandom(4000).hex()},
            )
        await spool.settle(settles)  # would raise SpoolUnavailable("disk full") without it
        c = await spool.counts()
        assert (c.queued, c.inflight, c.delivered) == (0, 0, 50)
        assert spool.statistics().full_batches >= 1
        assert not reserve.exists()
        with pytest.raises(SpoolUnavailable, match="reserve_bytes"):
            await spool.accept(batch(message("new@d.example")))
        filler.unlink()
        deadline = time.monotonic() + 10
        while not reserve.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the writer's upkeep allocates it again
        assert reserve.stat().st_size == MB
        assert spool.problem() is None
        await spool.accept(batch(message("new@d.example")))
        await spool.close()

    asyncio.run(main())


def test_a_spool_file_made_without_auto_vacuum_is_converted_at_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "spool.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    schema.create(conn)  # the layout of an older node: auto_vacuum off
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()

    async def main() -> None:
        spool = await opened(data, min_free_bytes=0, reserve_bytes=0)
        await spool.accept(batch(message("r@d.example")))
        await spool.close()

    asyncio.run(main())
    conn = sqlite3.connect(data / "spool.db")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == schema.INCREMENTAL
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    conn.close()


class Ballast:
    """A writer keeper whose space to give is a plain file (the spool's is its reserve)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_bytes(os.urandom(256 * 1024))
        self.released = 0

    def committed(self, conn: sqlite3.Connection) -> None:
        pass

    def full(self) -> bool:
        self.released += 1
        self.path.unlink()
        return True

    def upkeep(self, conn: sqlite3.Connection, idle: bool, waiting: Callable[[], bool]) -> None:
        pass


def test_a_full_batch_refuses_new_mail_and_writes_work_in_flight(
    tmpfs: Callable[[int], Path],
) -> None:
    """Accepts and settles share transactions: on SQLITE_FULL they part ways."""
    fs = tmpfs(2)
    ballast = Ballast(fs / "ballast")

    async def main() -> None:
        def connect() -> sqlite3.Connection:
            return sqlite3.connect(fs / "w.db", isolation_level=None, check_same_thread=False)

        def setup(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t (essential INTEGER, b BLOB)")

        def insert(essential: bool, size: int, conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (?, ?)", (essential, os.urandom(size)))

        writer = GroupCommitWriter(connect, 0.05, keeper=ballast)  # window: one transaction
        await writer.start(setup)
        filler = fill(fs)
        new_mail = writer.run(functools.partial(insert, False, 300_000), essential=False)
        settle = writer.run(functools.partial(insert, True, 20_000))
        refused, written = await asyncio.gather(new_mail, settle, return_exceptions=True)
        assert isinstance(refused, SpoolUnavailable) and refused.reason == "disk full", refused
        assert written is None, written
        assert ballast.released == 1
        assert writer.statistics().full_batches == 1
        await writer.close()
        filler.unlink()

    asyncio.run(main())
    conn = sqlite3.connect(fs / "w.db")
    assert conn.execute("SELECT essential FROM t").fetchall() == [(1,)]
    conn.close()
