"""What waiting for the other datacenter's copy costs an accept (cluster/linked.py).

Two datacenters (testing/nats.py ``two_datacenters("leaf")``: 2 x 3 nats-servers, one
JetStream domain each, leafnodes), the JetStream spool of each at R3 with its
multidc.Link (discovery, mirrors of the other's streams). For dc1's spool, accepts are
measured plain (acknowledged on dc1's R3 quorum) and linked (then also until dc2's
mirrors hold them, as LinkedSpool does):

* latency: ``--n`` sequential 1-recipient accepts, median and p99 ms;
* rate: ``--concurrency`` accepts in flight for ``--seconds``, batches of 1 and 100.

All on loopback and 2 shared cores: the link between the datacenters costs no network
time here, so the linked figure is the floor of the cost (one round of stream-info
requests to the peer per group of waiting accepts) plus the peer's mirror lag; across
real datacenters add one round trip between them.

    python -m bench.multidc_accept [--n 300] [--seconds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.jetstream_spool import make_batch
from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.cluster.multidc import Link
from postline.testing.nats import two_datacenters


async def latency(spool: JetStreamSpool, link: Link | None, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await spool.accept(make_batch(1, time.time()))
        if link is not None:
            await link.copied()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[max(int(len(times) * 0.99) - 1, 0)]


async def rate(
    spool: JetStreamSpool, link: Link | None, size: int, seconds: float, concurrency: int
) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await spool.accept(make_batch(size, time.time()))
            if link is not None:
                await link.copied()
            done += size

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def run(urls: list[list[str]], args: argparse.Namespace) -> None:
    spools: list[JetStreamSpool] = []
    links: list[Link] = []
    for dc, servers in zip(("dc1", "dc2"), urls, strict=True):
        spool = await open_jetstream_spool(servers, replicas=3, prefix=f"PL_{dc}")
        spools.append(spool)
        links.append(await Link.start(spool._nc, spool.log.js, dc, 3, 86400.0))
    deadline = time.monotonic() + 30
    while not all(p.up for link in links for p in link.peers.values()) or not all(
        link.peers for link in links
    ):
        assert time.monotonic() < deadline, "the datacenters did not link"
        for link in links:
            await link.discover()
    spool, link = spools[0], links[0]
    try:
        for label, waits in (("plain", None), ("linked", link)):
            p50, p99 = await latency(spool, waits, args.n)
            print(f"{label:<7} accept latency (1 recipient): median {p50:.2f} ms, p99 {p99:.2f} ms")
        for size in (1, 100):
            for label, waits in (("plain", None), ("linked", link)):
                r = await rate(spool, waits, size, args.seconds, args.concurrency)
                flight = f"{args.concurrency} in flight"
                print(f"{label:<7} batch {size:>3}, {flight}: {r:,.0f} recipients/s")
    finally:
        for link in links:
            await link.close()
        for s in spools:
            await s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.multidc_accept", description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="sequential accepts for the latency")
    ap.add_argument("--seconds", type=float, default=3.0, help="per rate run")
    ap.add_argument("--concurrency", type=int, default=32, help="accepts in flight")
    args = ap.parse_args(argv)
    with two_datacenters("leaf") as d:
        asyncio.run(run([dc.urls for dc in d.dcs], args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
