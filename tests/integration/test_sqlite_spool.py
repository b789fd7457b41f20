"""The SQLite spool beyond the conformance suite: group commit, storage failures, recovery,
and a real crash (SIGKILL) of a process that acknowledges batches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postline.backends.sqlite import schema
from postline.backends.sqlite.errors import translate
from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.config import Duration, SpoolConfig
from postline.spool.conformance import LEASE, T0, batch, message
from postline.spool.interface import Counts, SpoolUnavailable

ANY_FREE = SpoolConfig(min_free_bytes=0, reserve_bytes=0)


async def opened(data_dir: Path, cfg: SpoolConfig = ANY_FREE, **kw: Any) -> SqliteSpool:
    return await open_sqlite_spool(str(data_dir), cfg, **kw)


def test_concurrent_accepts_share_transactions(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path)
        before = spool.statistics()
        batches = [batch(message(f"r{i}@d.example")) for i in range(200)]
        await asyncio.gather(*(spool.accept(b) for b in batches))
        after = spool.statistics()
        assert after.ops - before.ops == 200
        assert after.commits - before.commits <= 20, after  # typically 2: 1, then 199
        assert (await spool.counts()).queued == 200
        await spool.close()

    asyncio.run(main())


def test_a_failing_batch_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = SpoolConfig(min_free_bytes=0, commit_window=Duration(0.05))  # one transaction
        spool = await opened(tmp_path, cfg)
        good = [batch(message(f"r{i}@d.example")) for i in range(20)]
        bad = batch(message("bad@d.example"))
        bad.messages[0].personalization = {"not": "bytes"}  # type: ignore[assignment]
        results = await asyncio.gather(
            *(spool.accept(b) for b in [*good[:10], bad, *good[10:]]), return_exceptions=True
        )
        assert isinstance(results[10], sqlite3.Error), results[10]
        assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
        assert spool.statistics().split_batches == 1
        c = await spool.counts()
        assert (c.queued, c.messages, c.bodies, c.events) == (20, 20, 20, 20)  # nothing of bad
        await spool.close()

    asyncio.run(main())


def test_min_free_bytes_refuses_new_mail(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path, SpoolConfig(min_free_bytes=2**62))
        with pytest.raises(SpoolUnavailable, match="disk full"):
            await spool.accept(batch(message("r@d.example")))
        c = await spool.counts()
        assert (c.queued, c.events) == (0, 0)
        await spool.close()

    asyncio.run(main())


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: the only way to fill a disk for real (root ignores permissions)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_disk_full_is_unavailable_and_writes_nothing(tiny_fs: Path) -> None:
    async def main() -> None:
        spool = await opened(tiny_fs / "data")
        for i in range(5):
            await spool.accept(batch(*(message(f"r{i}-{k}@d.example") for k in range(10))))
        before = await spool.counts()
        filler = fill(tiny_fs)
        big = batch(*(message(f"big{k}@d.example") for k in range(10)), body=b"z" * 600_000)
        with pytest.raises(SpoolUnavailable, match="disk full"):
            await spool.accept(big)
        assert await spool.counts() == before  # all or nothing
        filler.unlink()
        await spool.accept(big)  # the same batch, retried once there is room
        after = await spool.counts()
        assert (after.messages, after.events) == (before.messages + 10, before.events + 10)
        await spool.close()

    asyncio.run(main())


def test_read_only_storage_is_unavailable(tiny_fs: Path) -> None:
    async def main() -> None:
        spool = await opened(tiny_fs / "data")
        await spool.accept(batch(message("r@d.example")))
        await spool.close()
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
        with pytest.raises(SpoolUnavailable):
            await opened(tiny_fs / "data")

    asyncio.run(main())


def test_read_only_database_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path)
        await spool._writer.run(lambda conn: conn.execute("PRAGMA query_only=1"))
        with pytest.raises(SpoolUnavailable, match="read-only"):
            await spool.accept(batch(message("r@d.example")))
        await spool.close()

    asyncio.run(main())


def test_storage_errors_translate_by_cause() -> None:
    io = translate(sqlite3.OperationalError("disk I/O error"))
    assert isinstance(io, SpoolUnavailable) and io.reason == "disk I/O error"
    assert isinstance(translate(OSError(28, "No space left on device")), SpoolUnavailable)
    bug = sqlite3.IntegrityError("UNIQUE constraint failed")
    assert translate(bug) is bug


def test_closed_spool_refuses(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path)
        await spool.close()
        with pytest.raises(SpoolUnavailable, match="closed"):
            await spool.accept(batch(message("r@d.example")))
        with pytest.raises(SpoolUnavailable, match="closed"):
            await spool.counts()

    asyncio.run(main())


def test_reopen_makes_leased_deliveries_due(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path)
        await spool.accept(batch(message("a@d.example", "b@d.example")))
        assert len(await spool.lease("t1", "d.example", T0, 10, 10**10)) == 2
        await spool.close()  # as good as a crash: the leases were never settled
        reader = await opened(tmp_path, recover=False)
        assert (await reader.counts()).inflight == 2  # a reader process changes nothing
        await reader.close()
        spool = await opened(tmp_path)
        c = await spool.counts()
        assert (c.queued, c.inflight) == (2, 0)
        assert len(await spool.lease("t1", "d.example", time.time(), 10, LEASE)) == 2
        await spool.close()

    asyncio.run(main())


def test_load_hands_out_one_body_object(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await opened(tmp_path)
        await spool.accept(batch(*(message(f"r{i}@d.example") for i in range(1000))))
        leases = await spool.lease("t1", "d.example", T0, 1000, LEASE)
        loaded = await spool.load([x.message_id for x in leases])
        assert len(loaded) == 1000
        assert len({id(m.body) for m in loaded}) == 1  # not 1000 copies of a 30 MB body
        await spool.close()

    asyncio.run(main())


def test_hot_queries_use_the_small_indexes(tmp_path: Path) -> None:
    async def create() -> None:
        await (await opened(tmp_path)).close()

    asyncio.run(create())
    conn = sqlite3.connect(tmp_path / "spool.db")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {n for n in names if not n.startswith("sqlite_autoindex")} == {
        "deliveries_queue",
        "deliveries_expiry",
    }
    due = conn.execute(f"EXPLAIN QUERY PLAN {schema.SELECT_DUE}", ("d", "t", 0, 1)).fetchall()
    assert "deliveries_queue" in str(due) and "TEMP B-TREE" not in str(due), due
    old = conn.execute(f"EXPLAIN QUERY PLAN {schema.SELECT_EXPIRED}", (0, 0, 1)).fetchall()
    assert "deliveries_expiry" in str(old) and "TEMP B-TREE" not in str(old), old
    conn.close()


# -- a real crash: SIGKILL a process that prints each batch once accept() returned -------

WRITER = """
import asyncio, sys
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.spool.interface import AcceptBatch, NewMessage

def make(i):
    msgs = [NewMessage(f"crash{i}.pl1.{k}", f"<{i}.{k}@h>", b"p", [f"a{k}@d.example",
            f"b{k}@e.example"], 0.0) for k in range(3)]
    return AcceptBatch("t1", b"body %d" % i, msgs, [], 0.0, 1e12)

async def main(data_dir, start):
    spool = await open_sqlite_spool(data_dir, SpoolConfig(min_free_bytes=0))
    async def worker(i):
        while True:
            await spool.accept(make(i))
            print(i, flush=True)
            i += 8
    await asyncio.gather(*(worker(start + w) for w in range(8)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def crash_after(data_dir: Path, start: int, acknowledged: int) -> set[int]:
    """Run WRITER until it acknowledged that many batches, SIGKILL it, return what it said."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_dir), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: set[int] = set()
    try:
        for line in proc.stdout:
            seen.add(int(line))
            if len(seen) >= acknowledged:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        # Read through the same text streams the loop used: communicate() reads the raw
        # pipes and misses what the loop's read-ahead already buffered (a line cut in two,
        # its tail then parsed alone: ValueError for '\n', seen once in a full run).
        with proc.stdout, proc.stderr:
            rest, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=30)
    seen |= {int(x) for x in rest.splitlines(keepends=True) if x.endswith("\n")}
    assert len(seen) >= acknowledged, err
    return seen


async def present_batches(data_dir: Path) -> tuple[set[int], Counts]:
    spool = await opened(data_dir)  # recovers the WAL as the next node start would
    counts = await spool.counts()
    await spool.close()
    with contextlib.closing(sqlite3.connect(data_dir / "spool.db")) as conn:
        ids = [sg for (sg,) in conn.execute("SELECT sg_message_id FROM messages")]
    return {int(sg.split(".")[0].removeprefix("crash")) for sg in ids}, counts


def test_acknowledged_batches_survive_sigkill(tmp_path: Path) -> None:
    acknowledged: set[int] = set()
    for n, start in enumerate((0, 1_000_000, 2_000_000)):
        acknowledged |= crash_after(tmp_path, start, 100 * (n + 1))
        present, counts = asyncio.run(present_batches(tmp_path))
        assert acknowledged <= present, sorted(acknowledged - present)[:10]
        # all or nothing: every batch present has its 3 messages and 6 deliveries
        assert (counts.messages, counts.queued, counts.bodies) == (
            3 * len(present),
            6 * len(present),
            len(present),
        )
