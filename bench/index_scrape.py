"""What a ``/metrics`` scrape or ``postline status`` costs a cluster node with a backlog.

    .venv/bin/python -m bench.index_scrape [--deliveries 1000000] [--queues 4]

Fills a JetStream spool index (backends/jetstream/index.py) with DELIVERIES queued
deliveries over QUEUES destination queues, as a node's follower would, then times
``cluster/report.queue_rows`` (the 50 deepest queues: depth, oldest, next due, leased),
which runs on the node's event loop at every scrape. Before the index kept per-queue
heaps and counts it read every delivery of those queues: 690-720 ms a scrape at a
million deliveries (2026-11-28); since, ~0.1 ms.
"""

from __future__ import annotations

import argparse
import time

from postline.backends.jetstream.index import Index
from postline.backends.jetstream.records import DeliveryState
from postline.cluster import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--queues", type=int, default=4)
    args = parser.parse_args(argv)
    index = Index()
    t0 = time.perf_counter()
    for did in range(args.deliveries):
        domain = f"d{did % args.queues}.example"
        due, leased = 1000.0 + did % 100, did % 10 == 0
        state = DeliveryState(did, did, did, "t", f"r{did}@{domain}", domain, due, 1e9,
                              float(did), 0, leased, f"m{did}")  # fmt: skip
        index.apply(did, did + 1, f"s.{did}", state)
        if did and did % 200_000 == 0:
            print(f"  {did} deliveries indexed", flush=True)
    fill = time.perf_counter() - t0
    print(f"index: {args.deliveries} deliveries in {args.queues} queues, "
          f"{fill / args.deliveries * 1e6:.2f} us an apply")  # fmt: skip
    for _ in range(3):
        t0 = time.perf_counter()
        rows = report.queue_rows(index, frozenset(["node"]))
        took = time.perf_counter() - t0
        print(f"queue_rows (a scrape's queue part): {took * 1000:.2f} ms for {len(rows)} queues")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
