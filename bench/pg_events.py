"""Event ingest into PostgreSQL (cluster mode's shared activity and stats stores) through
the real store code, and the activity search at that size.

1. ``--events`` synthetic events (default 1,000,000) in log order over ``--days`` days
   (30: the retention), ``--recipients`` recipients, a message = processed + delivered,
   a third of them opened; JSON as the log has it (categories, a custom arg, meta on the
   processed event). A message's later events follow its processed event directly, or
   with ``--lag N`` N messages later (delivered) and 3N later (open), so that they land
   in later batches and merge into a stored message row. Built in batches of ``--batch``
   (20,000: the activity component's read size) before each timed call, so only the
   store's work is timed: ``PgActivityStore.ingest`` (COPY records built from the
   events and folded per message, the offset row locked and moved, the message rows
   merged, one transaction per batch) and, with ``--stats`` (default on),
   ``PgStatsStore.add_events`` on the same batches.
2. ANALYZE, then ``--repeat`` searches ``to_email="<random recipient>"`` through the
   query language (query_sql.compile_pg + pg_schema.search_sql, what GET /v3/messages runs)
   and the same number of message details by msg_id: p50 / p99; then the broad searches
   (no query with limit 10, the default listing; ``status="delivered"`` limit 1000; a
   category with opens; a day of last_event_time), ``--search-repeat`` times each: p50.

A fresh database ``postline_test_<random>`` on the local server (POSTLINE_TEST_PG, else
postgres@127.0.0.1), dropped at the end.

    python -m bench.pg_events [--events 1000000] [--batch 20000] [--repeat 500] [--lag 0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from postline.activity import pg_messages, pg_schema
from postline.activity.pg_api import SearchPlans
from postline.activity.pg_messages import Fold, message_rows, records
from postline.activity.pg_store import PgActivityStore
from postline.activity.query_sql import compile_pg
from postline.events.consumer import Batch
from postline.model.events import EventRecord
from postline.stats.pg_store import PgStatsStore
from postline.testing.postgres import admin_dsn, fresh_database

DAY = 86400
NOW = 1_800_000_000.0


def batches(n: int, size: int, days: int, recipients: int, lag: int = 0) -> Iterator[Batch]:
    """``n`` events in log order, ``size`` a batch; ts rising over ``days`` days to NOW; a
    message's events ``lag`` messages apart (0: one after the other)."""
    rng = random.Random(7)
    enc = msgspec.json.encode
    start = NOW - days * DAY
    step = days * DAY / n
    offset, batch = 0, []
    msg = 0
    due: dict[int, list[tuple[str, str, str, dict[str, object]]]] = {}
    while offset < n:
        msg += 1
        to = f"r{rng.randrange(recipients)}@d{rng.randrange(50)}.example"
        mid = f"m{msg:x}.{rng.getrandbits(32):08x}"
        base = {"email": to, "sg_message_id": mid, "smtp-id": f"<{mid}@x>",
                "category": ["news", f"c{msg % 20}"], "plan": "gold"}  # fmt: skip
        kinds = ["processed", "delivered"] + (["open"] if msg % 3 == 0 else [])
        for i, kind in enumerate(kinds):
            due.setdefault(msg + lag * (0, 1, 3)[i], []).append((kind, to, mid, base))
        for kind, to, mid, base in due.pop(msg, []):
            if offset >= n:
                break
            offset += 1
            ts = start + offset * step
            data = enc({**base, "event": kind, "timestamp": int(ts), "sg_event_id": str(offset)})
            meta = b""
            if kind == "processed":
                meta = enc({"from_email": "news@shop.example", "subject": f"Deal {msg % 100}"})
            batch.append((offset, EventRecord(ts, "t1", kind, to, mid, data, meta)))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def run(args: argparse.Namespace, dsn: str) -> None:
    merging = [0.0]  # seconds in pg_messages.upsert: the message rows' staging COPY + upsert
    upsert = pg_messages.upsert

    async def timed_upsert(conn: Any, fold: Fold) -> None:
        t0 = time.perf_counter()
        await upsert(conn, fold)
        merging[0] += time.perf_counter() - t0

    pg_messages.upsert = timed_upsert  # the store calls it through the module
    store = await PgActivityStore.open(dsn, clock=lambda: NOW)
    stats = await PgStatsStore.open(dsn) if args.stats else None
    t_act = t_stats = t_rec = 0.0
    n = 0
    samples: list[str] = []
    wall = time.perf_counter()
    try:
        for batch in batches(args.events, args.batch, args.days, args.recipients, args.lag):
            t0 = time.perf_counter()
            fold = Fold()  # the Python share of an ingest, timed apart (built again below)
            collections.deque(records(batch, fold), maxlen=0)  # consumed as COPY does
            collections.deque(message_rows(fold), maxlen=0)
            t_rec += time.perf_counter() - t0
            t0 = time.perf_counter()
            await store.ingest(batch)
            t1 = time.perf_counter()
            if stats is not None:
                await stats.add_events("stats", batch)
            t_act += t1 - t0
            t_stats += time.perf_counter() - t1
            n += len(batch)
            samples.append(batch[len(batch) // 2][1].email.lower())
        wall = time.perf_counter() - wall
        assert await store.rows() == n
        print(f"events: {n:,} over {args.days} days, {len(await store.partitions())} partitions")
        messages = await store.messages()
        print(f"activity ingest (COPY + message rows + offset, {args.batch:,}-event"
              f" transactions): {n / t_act:,.0f} events/s ({t_act:.1f} s, of which merging"
              f" the message rows (staging COPY + upsert) {merging[0]:.1f} s; building the"
              f" COPY records and message rows in Python, timed apart: {t_rec:.1f} s);"
              f" {messages:,} message rows")  # fmt: skip
        if stats is not None:
            print(f"stats ingest (fold + upserts + offset): {n / t_stats:,.0f} events/s "
                  f"({t_stats:.1f} s); rollup rows {await stats.row_count():,}")  # fmt: skip
        print(f"wall incl. generating the events: {wall:.1f} s")
        await store.pool.execute(f"ANALYZE {pg_schema.TABLE}")
        await store.pool.execute(f"ANALYZE {pg_schema.MESSAGES}")
        await store.refresh_size()
        print(f"activity partitions + message rows + indexes: {store.disk_bytes() / 1e6:,.0f} MB")
        api = SearchPlans(store)  # as GET /v3/messages queries the store
        rng = random.Random(11)
        lookups: list[float] = []
        details: list[float] = []
        for _ in range(args.repeat):
            rcpt = rng.choice(samples)
            c = compile_pg(f'to_email="{rcpt}"')
            col, val = c.prefilter or (None, None)
            sql = pg_schema.search_sql(c.where, col)
            t0 = time.perf_counter()
            rows = await api.query(sql, ["t1", val, *c.params, 10], 10.0)
            lookups.append(time.perf_counter() - t0)
            assert rows, rcpt
            t0 = time.perf_counter()
            got = await api.query(pg_schema.SELECT_MESSAGE, [rows[0][1], "t1"], 10.0)
            details.append(time.perf_counter() - t0)
            assert got
        for name, xs in (("to_email search", lookups), ("msg_id detail", details)):
            print(f"{name}: p50 {pct(xs, 0.5) * 1e3:.2f} ms, p99 {pct(xs, 0.99) * 1e3:.2f} ms, "
                  f"mean {statistics.fmean(xs) * 1e3:.2f} ms ({len(xs)} queries)")  # fmt: skip
        # no prefilter: what GET /v3/messages shows first, and filters over every message
        day = time.strftime("%Y-%m-%d", time.gmtime(NOW - DAY))
        broad = [("", 10), ('status="delivered"', 1000), ('status="processed"', 10),
                 ('Contains(categories, "c3") AND opens_count > 0', 10),
                 (f'last_event_time BETWEEN TIMESTAMP "{day}T00:00:00Z" AND '
                  f'TIMESTAMP "{day}T23:59:59Z"', 100)]  # fmt: skip
        for text, limit in broad:
            c = compile_pg(text)
            sql = pg_schema.search_sql(c.where, None)
            times = []
            for _ in range(args.search_repeat):
                t0 = time.perf_counter()
                rows = await api.query(sql, ["t1", *c.params, limit], 60.0)
                times.append(time.perf_counter() - t0)
            print(f"{text or '(no query)'} limit {limit}: p50 {pct(times, 0.5) * 1e3:.2f} ms,"
                  f" max {max(times) * 1e3:.2f} ms ({len(rows)} rows, {len(times)} queries,"
                  f" {n:,} events)")  # fmt: skip
    finally:
        pg_messages.upsert = upsert
        await store.close()
        if stats is not None:
            await stats.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pg_events", description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--recipients", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=500)
    ap.add_argument("--search-repeat", type=int, default=20)
    ap.add_argument("--lag", type=int, default=0)
    ap.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    with fresh_database(admin_dsn(os.environ)) as dsn:
        asyncio.run(run(args, dsn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
