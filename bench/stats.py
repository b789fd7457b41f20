"""Statistics rollups: event ingest into stats.db, and query latency over what it holds.

Events are built in memory first (10 tenants, 3 categories each out of 20, 30 days in time
order as the log holds them, a mix
of processed / delivered / deferred / bounce / open / click / dropped), then handed to the
``stats`` consumer in batches of 5,000 (the runner's batch) exactly as the runner would:
fold in Python, one transaction per batch with the offset. The peer is the same events
written the naive way, one row per event into a SQLite table in one transaction per batch
(what "recompute from raw events per query" would need to keep), on the same disk.
Query latency: GET /v3/stats over 365 days and /v3/categories/stats for 10 categories over
90 days, store read + shaping, p50 / p99.

    python -m bench.stats [--events 1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from postline.model.events import EventRecord, make_event
from postline.stats import api
from postline.stats.consumer import StatsConsumer
from postline.stats.store import StatsStore

BATCH = 5000
T0 = 1_700_000_000.0
KINDS = (
    ["processed"] * 30 + ["delivered"] * 28 + ["deferred"] * 4 + ["bounce"] * 2
    + ["open"] * 20 + ["click"] * 10 + ["dropped"] * 6
)  # fmt: skip


def make_events(n: int, seed: int = 1) -> list[tuple[int, EventRecord]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = rnd.choice(KINDS)
        tenant = f"t{rnd.randrange(10)}"
        extra: dict[str, object] = {}
        if kind == "dropped":
            extra["reason"] = rnd.choice(["Bounced Address", "Unsubscribed Address", "Invalid"])
        elif kind == "bounce":
            extra["type"] = rnd.choice(["bounce", "blocked"])
        rec = make_event(
            kind, tenant=tenant, email=f"u{rnd.randrange(200_000)}@x.example",
            ts=T0 + i / n * 30 * 86400, sg_message_id=f"m{rnd.randrange(500_000)}",
            smtp_id="<s>", categories=rnd.sample([f"cat{c}" for c in range(20)], 3),
            extra=extra,
        )  # fmt: skip
        out.append((i + 1, rec))
    return out


async def ingest(events: list[tuple[int, EventRecord]], data_dir: Path) -> tuple[float, int]:
    store = await StatsStore.open(data_dir)
    consumer = StatsConsumer(store)
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        await consumer.handle(events[i : i + BATCH])
    elapsed = time.perf_counter() - start
    rows = await store.row_count()
    await store.close()
    return len(events) / elapsed, rows


def naive(events: list[tuple[int, EventRecord]], path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE raw (offset INTEGER PRIMARY KEY, ts REAL, tenant TEXT, event TEXT,"
        " email TEXT, data BLOB)"
    )
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?)",
            [(o, r.ts, r.tenant, r.event, r.email, r.data) for o, r in events[i : i + BATCH]],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(events) / elapsed


async def query_latency(data_dir: Path, runs: int = 200) -> dict[str, tuple[float, float]]:
    store = await StatsStore.open(data_dir)
    day0 = int(T0 // 86400)
    cats = [f"cat{c}" for c in range(10)]
    shapes = {
        "global 365 days": ([""], (day0 - 300, day0 + 64)),
        "10 categories 90 days": (cats, (day0 - 45, day0 + 44)),
    }
    out = {}
    for name, (names, days) in shapes.items():
        rng = api.Range(days[0], days[1], "day")
        labels = rng.periods()
        times = []
        for i in range(runs):
            t = time.perf_counter()
            rows = await store.query(f"t{i % 10}", names, days)
            api.by_period(rows, rng, labels)
            times.append((time.perf_counter() - t) * 1000)
        q = statistics.quantiles(times, n=100)
        out[name] = (q[49], q[98])
    await store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="postline bench stats", description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="where stats.db goes (default: a temp dir)")
    args = ap.parse_args(argv)
    print(f"building {args.events:,} events ...", flush=True)
    events = make_events(args.events)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rate, rows = asyncio.run(ingest(events, Path(tmp)))
        peer = naive(events, Path(tmp) / "raw.db")
        print(f"stats ingest: {rate:,.0f} events/s into {rows:,} rollup rows")
        print(f"peer (one SQLite row per event, same batches): {peer:,.0f} events/s")
        print(f"ratio: {rate / peer:.2f}")
        for name, (p50, p99) in asyncio.run(query_latency(Path(tmp))).items():
            print(f"query {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
