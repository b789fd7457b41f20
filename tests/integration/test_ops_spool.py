"""The operator's reads and writes on a real ``spool.db`` (no node): shape, flush, purge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from postline.accept.expand import expand
from postline.backends.sqlite import admin, inspect
from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.config import SpoolConfig
from postline.model.mail import decode_request
from postline.spool.interface import Settle, Settlement

T0 = 1_000_000.0


def request(*rcpts: str, send_at: int | None = None) -> Any:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": r}], "custom_args": {"n": r}} for r in rcpts],
        "from": {"email": "a@s.test"},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "v"}],
        "categories": ["news"],
    }
    if send_at is not None:
        body["send_at"] = send_at
    return decode_request(json.dumps(body).encode())


async def spool_with(tmp: Path, *batches: tuple[str, Any]) -> SqliteSpool:
    spool = await open_sqlite_spool(str(tmp), SpoolConfig(min_free_bytes=0))
    for x_id, req in batches:
        b = expand(req, tenant="t1", node="pl1", host="h", now=T0, max_age=3600, x_message_id=x_id)
        await spool.accept(b)
    return spool


async def defer_all(spool: SqliteSpool, domain: str, retry_at: float) -> None:
    leases = await spool.lease("t1", domain, T0 + 1, 100, 60)
    await spool.settle([Settle(x, Settlement.DEFERRED, None, retry_at) for x in leases])


def test_shape_counts_states_and_ages(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await spool_with(
            tmp_path,
            ("aaa", request("1@a.test", "2@a.test", "3@b.test")),
            ("bbb", request("4@a.test", send_at=int(T0) + 9000)),
        )
        await defer_all(spool, "b.test", T0 + 600)
        await spool.lease("t1", "a.test", T0 + 1, 1, 60)  # one in flight
        await spool.close()

    asyncio.run(main())
    conn = inspect.open_readonly(tmp_path)
    a, b = inspect.queue_shape(conn, T0 + 700)
    assert (a.domain, a.total, a.inflight, a.due, a.scheduled) == ("a.test", 3, 1, 1, 1)
    assert a.ages[2] == 3  # 11m40s old: the 10-20 minute column
    assert (b.domain, b.deferred, b.due) == ("b.test", 0, 1)  # its retry time has come
    (b_later,) = inspect.queue_shape(conn, T0 + 100, "b.test")
    assert b_later.deferred == 1 and b_later.next_retry == T0 + 600


def test_a_request_id_does_not_match_a_longer_one(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await spool_with(
            tmp_path, ("ab_c", request("1@a.test")), ("ab_cd", request("2@a.test"))
        )
        await spool.close()

    asyncio.run(main())
    conn = inspect.open_readonly(tmp_path)
    view = inspect.message(conn, "ab_c")
    assert [d.rcpt for d in view.pending] == ["1@a.test"]
    assert [e.email for e in view.events] == ["1@a.test"]
    assert [d.rcpt for d in inspect.message(conn, "ab_cd.pl1.0").pending] == ["2@a.test"]


def test_flush_leaves_scheduled_mail_alone(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await spool_with(
            tmp_path,
            ("aaa", request("1@a.test", "2@b.test")),
            ("bbb", request("3@a.test", send_at=int(T0) + 9000)),
        )
        await defer_all(spool, "a.test", T0 + 600)
        await defer_all(spool, "b.test", T0 + 600)
        await spool.close()

    asyncio.run(main())
    conn = admin.open_readwrite(tmp_path)
    assert admin.flush(conn, T0 + 10, "a.test") == {("t1", "a.test"): 1}
    assert admin.flush(conn, T0 + 10) == {("t1", "b.test"): 1}
    (a,) = inspect.queue_shape(conn, T0 + 10, "a.test")
    assert (a.due, a.scheduled) == (1, 1)


def test_purge_records_events_and_frees_bodies(tmp_path: Path) -> None:
    async def main() -> None:
        spool = await spool_with(tmp_path, ("aaa", request("1@a.test", "2@a.test", "3@b.test")))
        held = await spool.lease("t1", "b.test", T0 + 1, 10, 60)
        await spool.close()
        assert len(held) == 1

    asyncio.run(main())
    conn = admin.open_readwrite(tmp_path)
    purged = admin.purge(conn, T0 + 5, domain="a.test")
    assert sorted(p.rcpt for p in purged) == ["1@a.test", "2@a.test"]
    assert admin.purge(conn, T0 + 5, domain="b.test") == []  # leased: a node holds it
    assert [p.rcpt for p in admin.purge(conn, T0 + 5, message="aaa", leased=True)] == ["3@b.test"]
    counts = conn.execute("SELECT (SELECT count(*) FROM bodies), (SELECT count(*) FROM messages),"
                          " (SELECT count(*) FROM deliveries)").fetchone()  # fmt: skip
    assert counts == (0, 0, 0)
    dropped = [json.loads(e.data) for e in inspect.message(conn, "aaa").events]
    dropped = [e for e in dropped if e["event"] == "dropped"]
    assert len(dropped) == 3
    first = next(e for e in dropped if e["email"] == "1@a.test")
    assert first["reason"] == "Purged by operator" and first["status"] == "5.0.0"
    assert first["category"] == ["news"] and first["n"] == "1@a.test"
    assert first["sg_message_id"] == "aaa.pl1.0" and first["smtp-id"] == "<aaa.0@h>"
    assert inspect.totals(conn).counters["dropped"] == 3
