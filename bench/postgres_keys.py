"""API key lookups: the PostgreSQL store's in-memory mirror beside the embedded SQLite store
and beside a query per lookup (what the mirror avoids), plus how fast a key created on one
node is usable on another.

1. ``--keys`` keys are created through one PostgresKeyStore ("node A", in a fresh database
   ``postline_test_<random>`` on the local server, dropped at the end) and the same number
   through a SqliteKeyStore in a temp dir.
2. Lookups/s for 1 s each, half known keys and half unknown (guessed) ones: A's
   ``lookup``, the SQLite store's ``lookup``, and one ``SELECT ... WHERE hash = $1`` per
   lookup over one asyncpg connection (sequential round trips).
3. Propagation: ``--creates`` keys created one by one on A; for each, the time until a
   second store ("node B", its own connections) answers the lookup, polled every 0.1 ms.
   p50 / p99 / max. Often 0: B's notification arrives before A's INSERT returns.

    python -m bench.postgres_keys [--keys 2000] [--creates 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from postline.backends.postgres.keys import PostgresKeyStore
from postline.backends.sqlite.keys import SqliteKeyStore
from postline.keys import generate, key_hash
from postline.testing.postgres import admin_dsn, fresh_database

SEND = frozenset({"mail.send"})


def rate(lookup: Callable[[str], Any], keys: list[str], seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for k in keys:
            lookup(k)
        n += len(keys)
    return n / elapsed


async def query_rate(dsn: str, keys: list[str], seconds: float = 1.0) -> float:
    conn = await asyncpg.connect(dsn)
    sql = "SELECT key_id, tenant, scopes FROM api_keys WHERE hash = $1 AND NOT revoked"
    n, start = 0, time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - start) < seconds:
            for k in keys[:200]:
                await conn.fetchrow(sql, key_hash(k))
            n += min(len(keys), 200)
    finally:
        await conn.close()
    return n / elapsed


def propagation(a: PostgresKeyStore, b: PostgresKeyStore, creates: int) -> list[float]:
    waits = []
    for i in range(creates):
        key, _ = a.create(f"p{i}", "bench", SEND)
        start = time.perf_counter()
        while b.lookup(key) is None:
            if time.perf_counter() - start > 10:
                raise RuntimeError("a key created on A did not reach B within 10 s")
            time.sleep(0.0001)  # a spin holding the GIL would delay B's loop thread by 5 ms
        waits.append(time.perf_counter() - start)
    return waits


def _run(dsn: str, sqlite_dir: str, n: int, creates: int) -> None:
    a = PostgresKeyStore(dsn)
    b = PostgresKeyStore(dsn)
    lite = SqliteKeyStore(sqlite_dir)
    try:
        start = time.perf_counter()
        known = [a.create(f"k{i}", f"t{i % 10}", SEND)[0] for i in range(n)]
        made = n / (time.perf_counter() - start)
        known_lite = [lite.create(f"k{i}", f"t{i % 10}", SEND)[0] for i in range(n)]
        guessed = [generate()[0] for _ in range(n)]
        mix, mix_lite = [*known, *guessed], [*known_lite, *guessed]
        print(f"{n} keys; create through PostgresKeyStore: {made:,.0f}/s (one round trip each)")
        print(f"lookups/s, half known, half guessed ({len(mix)} distinct):")
        print(f"  postgres mirror (dict):      {rate(a.lookup, mix):>12,.0f}")
        print(f"  sqlite (embedded store):     {rate(lite.lookup, mix_lite):>12,.0f}")
        q = asyncio.run(query_rate(dsn, mix))
        print(f"  postgres, a query per lookup:{q:>12,.0f}  (what the mirror avoids)")
        waits = sorted(propagation(a, b, creates))
        p = [waits[int(len(waits) * x) - 1] * 1000 for x in (0.5, 0.99, 1.0)]
        print(f"created on A, usable on B, {creates} keys: p50 {p[0]:.2f} ms, "
              f"p99 {p[1]:.2f} ms, max {p[2]:.2f} ms "
              f"(mean {statistics.mean(waits) * 1000:.2f} ms)")  # fmt: skip
        print(f"B: {b.statistics()}")
    finally:
        a.close()
        b.close()
        lite.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="postline bench postgres-keys", description=__doc__)
    ap.add_argument("--keys", type=int, default=2000, help="keys in each store")
    ap.add_argument("--creates", type=int, default=200, help="keys timed from A to B")
    args = ap.parse_args(argv)
    with fresh_database(admin_dsn(os.environ)) as dsn, tempfile.TemporaryDirectory() as tmp:
        _run(dsn, tmp, args.keys, args.creates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
