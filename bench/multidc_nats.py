"""Two datacenters on nats-server: leafnodes with JetStream domains vs a gateway
super-cluster, measured for what the multi-datacenter mode needs (cluster/multidc.py).

For each join (two 3-server clusters on loopback, testing/nats.py ``two_datacenters``):

* **ack**: sequential awaited ``js.publish`` to an R3 stream of dc1 from a client of dc1:
  median and p99 ms, with dc2 up and, later, with dc2 killed whole (the ack stays local
  if both are alike and the second works at all);
* **lag**: a mirror of that stream in dc2; ``--burst`` messages with ``publish_async``,
  then the time from the last PubAck in dc1 until the mirror holds the last message;
* **dc1 lost**: every dc1 server SIGKILLed, then in dc2: read the mirror, create a
  stream, create a consumer on the mirror, publish to a dc2 stream (each: ok or the
  error, with the time it took).

Everything is on loopback: the link between the datacenters is as fast as the links
inside one (no netem in this machine's kernel), so "the ack stays local" shows as the ack
working unchanged with the other datacenter dead, not as a latency difference.

    python -m bench.multidc_nats [--burst 5000] [--acks 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.js import api

from postline.testing.nats import Datacenters, two_datacenters

PAYLOAD = b"x" * 200


async def acks(js: Any, subject: str, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await js.publish(subject, PAYLOAD, timeout=10)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


async def attempt(what: str, make: Callable[[], Awaitable[Any]]) -> None:
    t = time.perf_counter()
    try:
        await asyncio.wait_for(make(), 15)
        outcome = "ok"
    except Exception as exc:
        outcome = f"FAILED {type(exc).__name__}: {str(exc)[:80]}"
    print(f"    {what}: {outcome} ({time.perf_counter() - t:.2f} s)")


async def run(d: Datacenters, burst: int, n_acks: int) -> None:
    leaf = d.join == "leaf"
    c1 = await nats.connect(d.dcs[0].urls, max_reconnect_attempts=-1)
    c2 = await nats.connect(d.dcs[1].urls, max_reconnect_attempts=-1)
    js1, js2 = c1.jetstream(timeout=10), c2.jetstream(timeout=10)
    place1 = None if leaf else api.Placement(cluster="dc1")
    place2 = None if leaf else api.Placement(cluster="dc2")
    await js1.add_stream(api.StreamConfig(
        name="A", subjects=["a"], num_replicas=3, placement=place1))  # fmt: skip
    source = api.StreamSource(name="A")
    if leaf:
        source.external = api.ExternalStream(api="$JS.dc1.API")
    mirror_name = "A" if leaf else "A_dc2"
    await js2.add_stream(api.StreamConfig(
        name=mirror_name, mirror=source, num_replicas=3, placement=place2))  # fmt: skip
    await js2.add_stream(api.StreamConfig(
        name="B", subjects=["b"], num_replicas=3, placement=place2))  # fmt: skip
    p50, p99 = await acks(js1, "a", n_acks)
    print(f"  ack in dc1, dc2 up: median {p50:.2f} ms, p99 {p99:.2f} ms")
    futs = [await js1.publish_async("a", PAYLOAD) for _ in range(burst)]
    last = max(int(a.seq) for a in await asyncio.gather(*futs))
    acked = time.perf_counter()
    while True:
        info = await js2.stream_info(mirror_name)
        if info.state.last_seq >= last:
            break
        await asyncio.sleep(0.002)
    lag = (time.perf_counter() - acked) * 1000
    print(f"  mirror lag after a burst of {burst}: {lag:.0f} ms from the last PubAck")
    p50, p99 = await acks(js2, "b", n_acks)
    print(f"  ack in dc2, dc1 up: median {p50:.2f} ms, p99 {p99:.2f} ms")
    await c1.close()  # (its reconnect attempts to a dead datacenter are only noise)
    d.kill(0)
    await asyncio.sleep(1.0)
    print("  dc1 killed whole; in dc2:")
    await attempt("read the mirror's last message",
                  lambda: js2.get_msg(mirror_name, seq=last))  # fmt: skip
    await attempt("publish to a dc2 stream", lambda: js2.publish("b", PAYLOAD, timeout=10))
    await attempt("create a stream", lambda: js2.add_stream(api.StreamConfig(
        name="C", subjects=["c"], num_replicas=3, placement=place2)))  # fmt: skip
    await attempt("consumer on the mirror", lambda: js2.pull_subscribe(
        ">", durable="x", stream=mirror_name))  # fmt: skip
    try:
        p50, p99 = await asyncio.wait_for(acks(js2, "b", n_acks), 30)
        print(f"  ack in dc2, dc1 lost: median {p50:.2f} ms, p99 {p99:.2f} ms")
    except Exception as exc:
        print(f"  ack in dc2, dc1 lost: FAILED {type(exc).__name__}")
    await c2.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--acks", type=int, default=300)
    args = ap.parse_args()
    for join in ("leaf", "gateway"):
        with two_datacenters(join) as d:
            print(f"{join}:")
            asyncio.run(run(d, args.burst, args.acks))


if __name__ == "__main__":
    main()
