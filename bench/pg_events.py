"""Event ingest into PostgreSQL (cluster mode's shared activity and stats stores) through
the real store code, and the activity search at that size.

1. ``--events`` synthetic events (default 1,000,000) in log order over ``--days`` days
   (30: the retention), ``--recipients`` recipients, a message = processed + delivered,
   a third of them opened; JSON as the log has it (categories, a custom arg, meta on the
   processed event). Built in batches of ``--batch`` (20,000: the activity component's
   read size) before each timed call, so only the store's work is timed:
   ``PgActivityStore.ingest`` (COPY records built from the events, the offset row locked
   and moved, one transaction per batch, into the day partitions) and, with ``--stats``
   (default on), ``PgStatsStore.add_events`` on the same batches.
2. ANALYZE, then ``--repeat`` searches ``to_email="<random recipient>"`` through the
   query language (query_sql.compile_pg + pg_schema.search_sql, what GET /v3/messages runs)
   and the same number of message details by msg_id: p50 / p99; then two searches no
   index serves (every message of the tenant aggregated), once each.

A fresh database ``postline_test_<random>`` on the local server (POSTLINE_TEST_PG, else
postgres@127.0.0.1), dropped at the end.

    python -m bench.pg_events [--events 1000000] [--batch 20000] [--repeat 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Iterator

import msgspec

from postline.activity import pg_schema
from postline.activity.pg_store import PgActivityStore, records
from postline.activity.query_sql import compile_pg
from postline.events.consumer import Batch
from postline.model.events import EventRecord
from postline.stats.pg_store import PgStatsStore
from postline.testing.postgres import admin_dsn, fresh_database

DAY = 86400
NOW = 1_800_000_000.0


def batches(n: int, size: int, days: int, recipients: int) -> Iterator[Batch]:
    """``n`` events in log order, ``size`` a batch; ts rising over ``days`` days to NOW."""
    rng = random.Random(7)
    enc = msgspec.json.encode
    start = NOW - days * DAY
    step = days * DAY / n
    offset, batch = 0, []
    msg = 0
    while offset < n:
        msg += 1
        to = f"r{rng.randrange(recipients)}@d{rng.randrange(50)}.example"
        mid = f"m{msg:x}.{rng.getrandbits(32):08x}"
        base = {"email": to, "sg_message_id": mid, "smtp-id": f"<{mid}@x>",
                "category": ["news", f"c{msg % 20}"], "plan": "gold"}  # fmt: skip
        kinds = ["processed", "delivered"] + (["open"] if msg % 3 == 0 else [])
        for kind in kinds:
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
    store = await PgActivityStore.open(dsn, clock=lambda: NOW)
    stats = await PgStatsStore.open(dsn) if args.stats else None
    t_act = t_stats = t_rec = 0.0
    n = 0
    samples: list[str] = []
    wall = time.perf_counter()
    try:
        for batch in batches(args.events, args.batch, args.days, args.recipients):
            t0 = time.perf_counter()
            list(records(batch))  # the Python share of an ingest, timed apart (built again below)
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
        print(f"activity ingest (COPY + offset, {args.batch:,}-event transactions): "
              f"{n / t_act:,.0f} events/s ({t_act:.1f} s, of which building the COPY records"
              f" in Python {t_rec:.1f} s)")  # fmt: skip
        if stats is not None:
            print(f"stats ingest (fold + upserts + offset): {n / t_stats:,.0f} events/s "
                  f"({t_stats:.1f} s); rollup rows {await stats.row_count():,}")  # fmt: skip
        print(f"wall incl. generating the events: {wall:.1f} s")
        await store.pool.execute(f"ANALYZE {pg_schema.TABLE}")
        await store.refresh_size()
        print(f"activity partitions + indexes: {store.disk_bytes() / 1e6:,.0f} MB")
        rng = random.Random(11)
        lookups: list[float] = []
        details: list[float] = []
        for _ in range(args.repeat):
            rcpt = rng.choice(samples)
            c = compile_pg(f'to_email="{rcpt}"')
            col, val = c.prefilter or (None, None)
            sql = pg_schema.search_sql(c.where, col)
            t0 = time.perf_counter()
            rows = await store.query(sql, ["t1", val, *c.params, 10], 10.0)
            lookups.append(time.perf_counter() - t0)
            assert rows, rcpt
            t0 = time.perf_counter()
            got = await store.query(pg_schema.SELECT_MESSAGE, [rows[0][1], "t1"], 10.0)
            details.append(time.perf_counter() - t0)
            assert got
        for name, xs in (("to_email search", lookups), ("msg_id detail", details)):
            print(f"{name}: p50 {pct(xs, 0.5) * 1e3:.2f} ms, p99 {pct(xs, 0.99) * 1e3:.2f} ms, "
                  f"mean {statistics.fmean(xs) * 1e3:.2f} ms ({len(xs)} queries)")  # fmt: skip
        # no prefilter: every message of the tenant aggregated (what an index cannot serve)
        for text in ('status="delivered"', 'Contains(categories, "c3") AND opens_count > 0'):
            c = compile_pg(text)
            sql = pg_schema.search_sql(c.where, None)
            t0 = time.perf_counter()
            rows = await store.query(sql, ["t1", *c.params, 10], 60.0)
            print(f"{text} (no index, all {n:,} events): {time.perf_counter() - t0:.2f} s")
    finally:
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
    ap.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    with fresh_database(admin_dsn(os.environ)) as dsn:
        asyncio.run(run(args, dsn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
