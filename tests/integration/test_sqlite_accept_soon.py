"""``SqliteSpool.accept_soon``: the relay link's accept, answered from the writer thread
the moment its transaction commits (smtp/supervisor.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.spool.conformance import batch, message
from postline.spool.interface import SpoolUnavailable


def test_done_runs_in_the_writer_thread_after_the_commit(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await open_sqlite_spool(
            str(tmp_path), SpoolConfig(min_free_bytes=0, reserve_bytes=0)
        )
        seen: list[tuple[BaseException | None, bool, int]] = []
        finished = threading.Event()
        loop_thread = threading.get_ident()

        def done(exc: BaseException | None) -> None:
            # Committed already: a separate connection sees the row at this very moment.
            with sqlite3.connect(tmp_path / "spool.db") as conn:
                rows = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
            seen.append((exc, threading.get_ident() != loop_thread, rows))
            if len(seen) == 3:
                finished.set()

        for i in range(3):
            spool.accept_soon(batch(message(f"r{i}@d.example")), done)
        await asyncio.to_thread(finished.wait, 10)
        assert [s[0] for s in seen] == [None, None, None]
        assert all(s[1] for s in seen)  # not the event loop's thread
        assert all(s[2] >= i + 1 for i, s in enumerate(seen)), seen
        bad = batch(message("bad@d.example"))
        bad.messages[0].personalization = {"not": "bytes"}  # type: ignore[assignment]
        failed: list[BaseException | None] = []
        got = threading.Event()

        def failed_done(exc: BaseException | None) -> None:
            failed.append(exc)
            got.set()

        spool.accept_soon(bad, failed_done)
        await asyncio.to_thread(got.wait, 10)
        assert isinstance(failed[0], sqlite3.Error), failed
        assert (await spool.counts()).queued == 3
        await spool.close()
        with pytest.raises(SpoolUnavailable):  # closed: refused at once, never called back
            spool.accept_soon(batch(message("late@d.example")), done)

    asyncio.run(main())


def test_admission_refuses_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        huge = SpoolConfig(min_free_bytes=1 << 62, reserve_bytes=0)  # no disk is that free
        spool = await open_sqlite_spool(str(tmp_path), huge)
        called: list[object] = []
        with pytest.raises(SpoolUnavailable):
            spool.accept_soon(batch(message("r@d.example")), called.append)
        await spool.close()
        assert called == []

    asyncio.run(main())
