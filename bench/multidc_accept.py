"""What waiting for the other datacenter's copy costs an accept (cluster/linked.py).

Two datacenters (testing/nats.py ``two_datacenters("leaf")``: 2 x 3 nats-servers, one
JetStream domain each, leafnodes), the JetStream spool of each at R3 with its
multidc.Link (discovery, mirrors of the other's streams). For dc1's spool, accepts are
measured plain (acknowledged on dc1's R3 quorum) and linked (then also until dc2's
mirrors hold them, as LinkedSpool does):

* latency: ``--n`` sequential 1-recipient accepts, median and p99 ms;
* rate: ``--concurrency`` accepts in flight for ``--seconds``, batches of 1 and 100.

* ``--wan MS``: the leafnodes go through a proxy delaying each direction by MS
  (testing/tcp_proxy.py; this kernel has no netem), a WAN between the datacenters;
* ``--split S``: dc1 accepts one batch every 20 ms while the link is cut for S seconds
  (Datacenters.split): the slowest accept, the accepts made during the split, and from
  the heal until dc1 waits for dc2 again and until dc2's mirror holds all of dc1's spool.

All on 2 shared cores; without ``--wan`` the link costs no network time, so the linked
figure is the floor of the cost (one round of stream-info requests to the peer per group
of waiting accepts, plus the peer's mirror lag).

    python -m bench.multidc_accept [--n 300] [--seconds 3] [--concurrency 32] [--wan 20]
    python -m bench.multidc_accept --split 5 --wan 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.jetstream_spool import make_batch
from postline.backends.jetstream.spool import JetStreamSpool, open_jetstream_spool
from postline.cluster.multidc import Link
from postline.testing.nats import Datacenters, two_datacenters


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


async def split(d: Datacenters, spool: JetStreamSpool, link: Link, seconds: float) -> None:
    """Accepts every 20 ms while the link is cut for ``seconds``; see the docstring."""
    loop = asyncio.get_running_loop()
    lat: list[tuple[float, float]] = []  # (start, ms) relative to the cut
    cut_at = loop.time() + 1.0
    healed_at = cut_at + seconds
    state = "before"
    while True:
        now = loop.time()
        if state == "before" and now >= cut_at:
            d.split()
            state = "cut"
        elif state == "cut" and now >= healed_at:
            d.heal()
            state = "healed"
        elif state == "healed" and link.peers["dc2"].up:
            break
        elif now > healed_at + 30:
            print("  dc2 not back 30 s after the heal")
            return
        t = loop.time()
        await spool.accept(make_batch(1, time.time()))
        await link.copied()
        lat.append((t - cut_at, (loop.time() - t) * 1000))
        await asyncio.sleep(0.02)
    up = loop.time() - healed_at
    js2 = link.peers["dc2"].js
    while True:
        ours = (await spool.log.js.stream_info("PL_dc1_SPOOL")).state.last_seq
        theirs = (await js2.stream_info("PL_dc1_SPOOL")).state.last_seq
        if theirs >= ours:
            break
        await asyncio.sleep(0.01)
    caught = loop.time() - healed_at
    during = [ms for at, ms in lat if 0 <= at < seconds]
    slow = max(lat, key=lambda x: x[1])
    print(f"  split {seconds:.0f} s: {len(during)} accepts during it (median"
          f" {statistics.median(during):.1f} ms), slowest {slow[1]:.0f} ms at"
          f" {slow[0]:+.2f} s from the cut; after the heal: dc1 waits for dc2 again after"
          f" {up:.1f} s, dc2's mirror holds all of dc1's spool after {caught:.1f} s")  # fmt: skip


async def run(d: Datacenters, args: argparse.Namespace) -> None:
    urls = [dc.urls for dc in d.dcs]
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
        if args.split:
            await split(d, spool, link, args.split)
            return
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
    ap.add_argument("--wan", type=float, default=0.0, help="one-way ms between the DCs")
    ap.add_argument("--split", type=float, default=0.0, help="seconds the link is cut")
    args = ap.parse_args(argv)
    wan = args.wan / 1000 if args.wan or args.split else None
    with two_datacenters("leaf", wan=wan) as d:
        asyncio.run(run(d, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
