"""Bodies streamed from a file into the SQLite spool (``AcceptBatch.body_file``): a 30 MB
relayed message is copied in bounded memory, a bad file fails only its own batch, disk
admission charges the file's size, and an older ``spool.db`` gets the layout that makes
the copy cheap (schema.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from postline.backends.sqlite import schema
from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.config import Duration, SpoolConfig
from postline.spool.conformance import LEASE, T0, batch, file_batch, message, pattern, write_file
from postline.spool.interface import SpoolUnavailable

MiB = 1 << 20
ANY_FREE = SpoolConfig(min_free_bytes=0, reserve_bytes=0)
# regular files whose size (fstat) is not what reading them gives: they change "during" the
# copy, after the size check, which exercises the savepoint
SYSFS_4096 = "/sys/devices/system/cpu/online"  # st_size 4096, a few octets of content
PROC_0 = "/proc/self/status"  # st_size 0, a kilobyte of content


async def opened(data_dir: Path, cfg: SpoolConfig = ANY_FREE, **kw: bool) -> SqliteSpool:
    return await open_sqlite_spool(str(data_dir), cfg, **kw)


def write_pattern(path: Path, size: int) -> str:
    """``pattern(size)`` written 1 MiB at a time (the test holds no copy of it)."""
    base = pattern(MiB + 251)
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            f.write(base[offset % 251 :][: min(MiB, size - offset)])
    return str(path)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        found = re.search(rf"^{name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert found is not None, name
    return int(found.group(1))


def reset_peak_rss() -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; return that, in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


def test_a_30_mb_body_file_is_copied_in_bounded_memory(tmp_path: Path) -> None:
    size = 30 * MiB
    path = write_pattern(tmp_path / "message.eml", size)
    digest = file_digest(path)

    async def main() -> None:
        spool = await opened(tmp_path / "data")
        await spool.accept(batch(message("warm@d.example")))  # statements prepared, pages in
        shared = [message(f"r{i}@d.example") for i in range(3)]  # refs 3: see schema.py
        tracemalloc.start()
        try:
            rss_before = reset_peak_rss()
            await spool.accept(file_batch(path, size, *shared))
            rss_peak = status_kib("VmHWM") - rss_before
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"accept {size >> 20} MiB: Python peak {peak / MiB:.2f} MiB, RSS +{rss_peak} KiB")
        assert peak < 4 * MiB, peak  # 1 MiB buffer; before: the file read whole, or nothing
        assert rss_peak < 16 * 1024, rss_peak  # data before refs zeroed 30 MB twice: +62 MB
        os.unlink(path)  # the caller removes it once accept returned

        leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
        ids = [x.message_id for x in leases if x.rcpt.startswith("r")]
        tracemalloc.start()
        try:
            rss_before = reset_peak_rss()
            loaded = await spool.load(ids)
            rss_peak = status_kib("VmHWM") - rss_before
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"load: Python peak {peak / MiB:.2f} MiB, RSS +{rss_peak} KiB")
        assert peak < size + 4 * MiB, peak  # one bytes object for the three messages
        # ... and no second copy inside SQLite (a SELECT of the blob: +62 MB; blobopen: +32)
        assert rss_peak < size // 1024 + 8 * 1024, rss_peak
        assert len({id(m.body) for m in loaded}) == 1 and len(loaded) == 3
        body = loaded[0].body
        assert len(body) == size and hashlib.sha256(body).hexdigest() == digest
        await spool.close()

    asyncio.run(main())


def test_a_bad_body_file_fails_alone_in_its_group_commit(tmp_path: Path) -> None:
    datas = [pattern(100_000 + i) for i in range(3)]
    paths = [write_file(str(tmp_path), f"good{i}", d) for i, d in enumerate(datas)]
    bad = {
        "missing": file_batch(str(tmp_path / "missing"), 10, message("x1@d.example")),
        "wrong size": file_batch(paths[0], 99_999, message("x2@d.example")),
        "ends early": file_batch(SYSFS_4096, 4096, message("x3@d.example")),
        "goes on": file_batch(PROC_0, 0, message("x4@d.example")),
    }
    good = [
        file_batch(p, len(d), message(f"f{i}@d.example"))
        for i, (p, d) in enumerate(zip(paths, datas, strict=True))
    ]
    good += [batch(message(f"p{i}@d.example")) for i in range(10)]

    async def main() -> None:
        cfg = SpoolConfig(min_free_bytes=0, reserve_bytes=0, commit_window=Duration(0.05))
        spool = await opened(tmp_path / "data", cfg)
        before = spool.statistics()
        everything = [*good[:5], *bad.values(), *good[5:]]
        results = await asyncio.gather(*map(spool.accept, everything), return_exceptions=True)
        after = spool.statistics()
        failed = dict(zip(bad, results[5 : 5 + len(bad)], strict=True))
        for what, error in failed.items():
            assert isinstance(error, ValueError), (what, error)
        assert "No such file" in str(failed["missing"])
        assert "99999" in str(failed["wrong size"])
        assert "ended after" in str(failed["ends early"])
        assert "longer than 0" in str(failed["goes on"])
        assert [r for r in results if not isinstance(r, ValueError)] == [None] * len(good)
        # one transaction for all: a bad file is refused inside it, not by splitting the group
        assert (after.batches - before.batches, after.split_batches) == (1, 0), after
        c = await spool.counts()
        assert (c.queued, c.messages, c.bodies, c.events) == (13, 13, 13, 13)  # nothing of bad
        leases = await spool.lease("t1", "d.example", T0, 100, LEASE)
        assert {x.rcpt for x in leases} == {m.recipients[0] for b in good for m in b.messages}
        by_rcpt = {x.rcpt: x.message_id for x in leases}
        for i, data in enumerate(datas):
            (m,) = await spool.load([by_rcpt[f"f{i}@d.example"]])
            assert m.body == data, i
        await spool.close()

    asyncio.run(main())


def test_disk_admission_charges_the_body_file_size(
    tmp_path: Path, tmpfs: Callable[[int], Path]
) -> None:
    """A 30 MB file costs about 60 MB (WAL and database): refused on a 48 MB disk, before
    anything is written; smaller batches still get in."""
    big = write_pattern(tmp_path / "big.eml", 30 * MiB)
    small = write_pattern(tmp_path / "small.eml", 8 * MiB)

    async def main() -> None:
        spool = await opened(tmpfs(48) / "data")
        with pytest.raises(SpoolUnavailable, match="disk full"):
            await spool.accept(file_batch(big, 30 * MiB, message("big@d.example")))
        c = await spool.counts()
        assert (c.queued, c.bodies, c.events) == (0, 0, 0)
        await spool.accept(batch(message("plain@d.example")))
        await spool.accept(file_batch(small, 8 * MiB, message("small@d.example")))
        assert (await spool.counts()).queued == 2
        await spool.close()

    asyncio.run(main())


OLD_BODIES = (
    "CREATE TABLE bodies (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, data BLOB NOT NULL,"
    " refs INTEGER NOT NULL)"
)


def make_older_file(data_dir: Path) -> None:
    """A spool.db as builds before body files made it: ``refs`` after ``data``."""

    async def fill() -> None:
        spool = await opened(data_dir)
        await spool.accept(batch(message("a@d.example", "b@d.example"), body=b"old body"))
        await spool.close()

    asyncio.run(fill())
    conn = sqlite3.connect(data_dir / "spool.db", isolation_level=None)
    conn.executescript(
        f"BEGIN; ALTER TABLE bodies RENAME TO b0; {OLD_BODIES};"
        " INSERT INTO bodies SELECT id, tenant, data, refs FROM b0; DROP TABLE b0; COMMIT;"
    )
    assert not schema.data_is_last(conn)
    conn.close()


def test_an_older_file_gets_data_last_at_the_owners_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_older_file(data_dir)
    body = pattern(300_000)
    path = write_file(str(tmp_path), "body", body)

    async def main() -> None:
        reader = await opened(data_dir, recover=False)
        await reader.close()
        with contextlib.closing(sqlite3.connect(data_dir / "spool.db")) as conn:
            assert not schema.data_is_last(conn)  # a reader process changes nothing
        spool = await opened(data_dir)
        leases = await spool.lease("t1", "d.example", T0, 10, LEASE)
        (old,) = await spool.load([leases[0].message_id])
        assert old.body == b"old body"
        await spool.accept(file_batch(path, len(body), message("c@e.example", "d@e.example")))
        (new,) = await spool.lease("t1", "e.example", T0, 1, LEASE)
        assert [m.body for m in await spool.load([new.message_id])] == [body]
        await spool.close()
        conn = sqlite3.connect(data_dir / "spool.db")
        assert schema.data_is_last(conn)
        assert conn.execute("SELECT refs FROM bodies ORDER BY id").fetchall() == [(1,), (1,)]
        conn.close()

    asyncio.run(main())
