"""Accept rate of the JetStream spool (cluster mode) beside the embedded SQLite spool.

For each spool: a 1-node nats-server with R1 streams, a 3-node cluster with R3 streams
(both on loopback, started here in temp dirs), and ``open_sqlite_spool`` in a temp dir
(the peer: the embedded default, same batches). For each batch size (``--sizes``, default
1 and 100 recipients, one personalization per recipient over 10 domains, a 2 KB body),
``--concurrency`` accept calls are kept in flight for ``--seconds``; the JetStream spool
publishes with ``publish_async``, at most ``--in-flight`` unacknowledged per connection.

Printed per run: recipients (= deliveries = ``processed`` events) accepted per second,
batches per second, and CPU-seconds of this process and of the nats-servers per 1,000
recipients. On this 2-core machine the client, the servers and (for R3) three servers
share the cores: the figure is the client's ceiling more than the server's.

    python -m bench.jetstream_spool [--seconds 3] [--sizes 1,100] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.sink import proc_cpu_seconds
from postline.backends.jetstream.spool import open_jetstream_spool
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.model import events as ev
from postline.spool.interface import AcceptBatch, NewMessage
from postline.testing.nats import NatsCluster, nats_cluster

BODY = b"x" * 2048
_serial = itertools.count(1)


def make_batch(recipients: int, now: float) -> AcceptBatch:
    messages, events = [], []
    for i in range(recipients):
        n = next(_serial)
        rcpt = f"r{n}@d{i % 10}.example"
        m = NewMessage(f"b{n}.pl1.0", f"<b{n}@bench>", b"pers", [rcpt], now)
        messages.append(m)
        events.append(ev.make_event(ev.PROCESSED, tenant="t1", email=rcpt, ts=now,
                                    sg_message_id=m.sg_message_id, smtp_id=m.smtp_id))  # fmt: skip
    return AcceptBatch("t1", BODY, messages, events, now, now + 86400.0)


async def drive(spool: Any, size: int, seconds: float, concurrency: int) -> tuple[int, float]:
    """Batches accepted in ``seconds`` with ``concurrency`` accepts in flight; elapsed."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await spool.accept(make_batch(size, time.time()))
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def report(label: str, size: int, batches: int, elapsed: float, cpu: dict[str, float]) -> None:
    rcpts = batches * size
    per_k = "  ".join(f"{k} {1000 * v / max(rcpts, 1):.3f}" for k, v in cpu.items())
    print(f"{label:<16} batch {size:>3}: {rcpts / elapsed:>9,.0f} recipients(events)/s"
          f"  {batches / elapsed:>8,.0f} batches/s  CPU-s per 1k recipients: {per_k}")  # fmt: skip


def measure(
    label: str,
    opener: Callable[[], Awaitable[Any]],
    size: int,
    args: argparse.Namespace,
    servers: list[int],
) -> None:
    async def main() -> tuple[int, float]:
        spool = await opener()
        try:
            await drive(spool, size, 0.3, args.concurrency)  # warm up
            return await drive(spool, size, args.seconds, args.concurrency)
        finally:
            await spool.close()

    def cpu() -> dict[str, float]:
        return {"client": time.process_time(),
                "servers": sum(proc_cpu_seconds(p) for p in servers)}  # fmt: skip

    before = cpu()
    batches, elapsed = asyncio.run(main())
    after = cpu()  # includes the warm-up and open/close: a slight overstatement
    report(label, size, batches, elapsed, {k: after[k] - before[k] for k in after})


def pids(cluster: NatsCluster) -> list[int]:
    return [s.proc.pid for s in cluster.servers if s.proc is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="postline bench jetstream", description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="per run")
    ap.add_argument("--sizes", default="1,100", help="recipients per batch, comma-separated")
    ap.add_argument("--concurrency", type=int, default=32, help="accept calls in flight")
    ap.add_argument("--in-flight", type=int, default=4000, help="publish_async bound")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    prefixes = itertools.count(1)

    def js(cluster: NatsCluster, replicas: int) -> Callable[[], Awaitable[Any]]:
        async def open_() -> Any:
            return await open_jetstream_spool(
                cluster.urls, replicas=replicas, prefix=f"B{next(prefixes)}",
                max_in_flight=args.in_flight,
            )  # fmt: skip

        return open_

    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "data")

            async def sqlite(path: str = path) -> Any:
                return await open_sqlite_spool(path, SpoolConfig())

            measure("sqlite (peer)", sqlite, size, args, [])
    for n, replicas in ((1, 1), (3, 3)):
        with nats_cluster(n) as cluster:
            for size in sizes:
                measure(f"jetstream {n}n R{replicas}", js(cluster, replicas), size, args,
                        pids(cluster))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
