"""``python -m bench.cluster``: cluster mode end to end, 1 node vs 2 nodes, beside embedded.

One 3-server NATS JetStream cluster (streams at R3) is started for the whole run, and a
fresh PostgreSQL database for each cluster run; then the same HTTP load as bench/e2e.py
(requests of 100 personalizations, 2 KB messages, every recipient unique, 8 keep-alive
connections) goes through:

  (a) one cluster node,
  (b) two cluster nodes (the connections split evenly over both),
  (c) one embedded node (SQLite spool, no [cluster]),

each delivering to Postfix's ``smtp-sink`` (bench/sink.py). The clock runs from the
first request to the last outcome (delivered + bounced + expired over the nodes'
``/metrics``). Each cluster run uses a datacenter of its own (its own streams) and a
database of its own, so no run reads or stores another's events.

CPU is read from /proc over the same interval, per process:

* each node (``postline serve``) and each of its workers (its child processes);
* the three nats-servers, summed;
* PostgreSQL: the backends connected to the bench database (``pg_stat_activity``,
  sampled every poll; a backend that ended between samples counts up to its last
  sample). The server's background processes (WAL writer, checkpointer) are shared with
  other databases on this machine and are not counted;
* smtp-sink and the load generator (this process), shown apart: they are the harness.

The CPU interval runs from the first request until every event-pipeline consumer of
every node has handled every event (processed + delivered of each message), so the
pipeline's work (activity and stats into SQLite/DuckDB or PostgreSQL) is all counted;
how long that took after the last delivery is printed.

"Nodes for 10^9 messages a day" divides 11,574 msg/s by the measured end-to-end rate per
node. The machine has 2 cores shared with other work: every process here competes for
them, so the 2-node figure is bounded by the cores, not by the cluster; read it beside
the CPU columns and the load average printed with each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench.e2e import PER_REQUEST, request_body
from bench.loadgen import build_request, run_load
from bench.procstat import children, command_name
from bench.sink import SmtpSink, proc_cpu_seconds
from postline.testing.nats import NatsCluster, nats_cluster
from postline.testing.node import NodeProcess
from postline.testing.postgres import admin_dsn, fresh_database
from postline.testing.scrape import scrape

PER_DAY = 1e9 / 86400  # 10^9 messages a day, in msg/s
CONNECTIONS = 8
TICK = 5.0  # seconds between progress lines


class PgBackends:
    """CPU of the PostgreSQL backends serving one database, sampled from /proc (the
    server runs on this machine). Connected to the admin database, so the sampling
    connection itself is not one of them."""

    def __init__(self, admin: str, database: str) -> None:
        self.database = database
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(asyncpg.connect(admin))
        self._last: dict[int, float] = {}

    def sample(self) -> None:
        rows = self._loop.run_until_complete(
            self._conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database)
        )
        for row in rows:
            cpu = proc_cpu_seconds(int(row["pid"]))
            if cpu:
                self._last[int(row["pid"])] = cpu

    def total(self) -> float:
        return sum(self._last.values())

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


@dataclass
class Meter:
    """CPU-seconds of every process of interest over one run (end minus start)."""

    nodes: list[NodeProcess]
    nats: NatsCluster | None
    pg: PgBackends | None
    sink: SmtpSink
    start: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, node in enumerate(self.nodes):
            assert node.proc is not None
            pid = node.proc.pid
            out[f"node{i + 1}"] = proc_cpu_seconds(pid)
            for child in children(pid):
                name = command_name(child).removeprefix("postline.")
                out[f"node{i + 1} {name}"] = out.get(f"node{i + 1} {name}", 0.0) + (
                    proc_cpu_seconds(child)
                )
        if self.nats is not None:
            out["nats-servers (3)"] = sum(
                proc_cpu_seconds(s.proc.pid) for s in self.nats.servers if s.proc is not None
            )
        if self.pg is not None:
            self.pg.sample()
            out["postgres backends"] = self.pg.total()
        out["smtp-sink (harness)"] = self.sink.cpu_seconds()
        times = os.times()
        out["load generator (harness)"] = times.user + times.system
        return out

    def begin(self) -> None:
        self.start = self._read()
        self.last = dict(self.start)

    def poll(self) -> None:
        # a worker that exits keeps its last reading (it would drop to 0 otherwise)
        now = self._read()
        self.last = {k: max(now.get(k, 0.0), self.last.get(k, 0.0)) for k in now | self.last}

    def spent(self) -> dict[str, float]:
        return {k: v - self.start.get(k, 0.0) for k, v in self.last.items()}


@dataclass
class Result:
    label: str
    nodes: int
    messages: int
    seconds: float
    cpu: dict[str, float]
    load: tuple[float, float, float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def per_million(self, cpu: float) -> float:
        return cpu / self.messages * 1e6

    def postline_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if k.startswith("node"))

    def system_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if "harness" not in k)

    def report(self) -> str:
        per_node = self.rate / self.nodes
        lines = [
            f"{self.label}: {self.messages} msgs in {self.seconds:.2f} s = {self.rate:.0f} "
            f"msg/s end to end ({per_node:.0f} msg/s per node); load average "
            f"{self.load[0]:.2f} {self.load[1]:.2f} {self.load[2]:.2f} at the end",
            f"    {'process':<28} {'CPU-s':>8} {'CPU-s/M msgs':>13} {'cores busy':>11}",
        ]
        for name, cpu in sorted(self.cpu.items()):
            lines.append(
                f"    {name:<28} {cpu:8.1f} {self.per_million(cpu):13.0f}"
                f" {cpu / self.seconds:11.2f}"
            )
        for name, cpu in (
            ("= postline (nodes+workers)", self.postline_cpu()),
            ("= all but the harness", self.system_cpu()),
        ):
            lines.append(
                f"    {name:<28} {cpu:8.1f} {self.per_million(cpu):13.0f}"
                f" {cpu / self.seconds:11.2f}"
            )
        lines.append(
            f"    nodes for 10^9 msgs/day at {per_node:.0f} msg/s per node: "
            f"{PER_DAY / per_node:.1f}; cores for 10^9/day at this CPU cost: "
            f"{PER_DAY * self.system_cpu() / self.messages:.1f} "
            f"(postline alone {PER_DAY * self.postline_cpu() / self.messages:.1f})"
        )
        return "\n".join(lines)


def node_config(sink_port: int, cluster: dict[str, Any] | None) -> dict[str, Any]:
    """As bench/e2e.py's default run: info log, the default event pipeline."""
    cfg: dict[str, Any] = {
        "delivery": {
            "routes": {"*": f"127.0.0.1:{sink_port}"},
            "shaping": {"max_connections": 20, "max_messages_per_connection": 1000},
        },
        "log": {"level": "info"},
    }
    if cluster is not None:
        cfg["cluster"] = cluster
    return cfg


def wait_key(node: NodeProcess, key: str, timeout: float = 30.0) -> None:
    """Until ``node`` knows a key another node created (PostgreSQL LISTEN/NOTIFY)."""
    deadline = time.monotonic() + timeout
    url = f"{node.base_url}/v3/user/webhooks/event/settings"
    while True:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=5):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 401 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


_CONSUMED = re.compile(r'^postline_consumer_events_total\{consumer="([^"]+)"\} (\S+)$', re.M)


def consumed(nodes: list[NodeProcess]) -> float:
    """The fewest events any pipeline consumer of any node has handled (in cluster mode
    each node's worker reads the whole shared log)."""
    counts = []
    for node in nodes:
        with urllib.request.urlopen(f"{node.base_url}/metrics", timeout=10) as resp:
            counts += [float(n) for _, n in _CONSUMED.findall(resp.read().decode())]
    return min(counts, default=0.0)


def outcomes(nodes: list[NodeProcess]) -> float:
    total = 0.0
    for node in nodes:
        m = scrape(node.http_port)
        total += m.get("delivered", 0) + m.get("bounced", 0) + m.get("expired", 0)
    return total


async def _load(nodes: list[NodeProcess], key: str, messages: int, size: int) -> dict[int, int]:
    """The requests split evenly over the nodes; a progress line every TICK seconds."""
    requests = messages // PER_REQUEST
    sent = [0]
    statuses: dict[int, int] = {}

    def maker(share: list[bytes]) -> Callable[[], bytes]:
        it = iter(share)

        def make() -> bytes:
            sent[0] += 1
            return next(it)

        return make

    async def ticker() -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(TICK)
            print(
                f"    ... {sent[0] * PER_REQUEST}/{messages} sent in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )

    shares: list[list[bytes]] = [[] for _ in nodes]
    for i in range(requests):
        body = request_body(i, size)
        shares[i % len(nodes)].append(build_request("127.0.0.1", "/v3/mail/send", body, key))
    tick = asyncio.get_running_loop().create_task(ticker())
    try:
        results = await asyncio.gather(
            *(
                run_load(
                    node.http_port,
                    maker(share),
                    seconds=3600,
                    connections=CONNECTIONS // len(nodes),
                    max_requests=len(share),
                )
                for node, share in zip(nodes, shares, strict=True)
            )
        )
    finally:
        tick.cancel()
    for r in results:
        for status, n in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    return statuses


def measure(
    label: str, nodes: list[NodeProcess], key: str, meter: Meter, messages: int, size: int
) -> Result:
    print(f"{label}: sending {messages} messages", flush=True)
    meter.begin()
    start = time.perf_counter()
    statuses = asyncio.run(_load(nodes, key, messages, size))
    accepted = time.perf_counter() - start
    print(
        f"    accepted in {accepted:.2f} s ({messages / accepted:.0f}/s), statuses {statuses}",
        flush=True,
    )
    if statuses != {202: messages // PER_REQUEST}:
        raise RuntimeError(f"{label}: not every request was accepted: {statuses}")
    done, last_print = 0.0, time.perf_counter()
    while done < messages:
        meter.poll()
        done = outcomes(nodes)
        now = time.perf_counter()
        if now - last_print > TICK:
            print(f"    ... {done:.0f}/{messages} delivered at {now - start:.0f} s", flush=True)
            last_print = now
        if now - start > 900:
            raise RuntimeError(f"{label}: only {done:.0f}/{messages} delivered in 900 s")
        if done < messages:
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    want = 2 * messages  # processed + delivered
    while (got := consumed(nodes)) < want and time.perf_counter() - start < 900:
        meter.poll()
        time.sleep(0.2)
    meter.poll()
    lag = time.perf_counter() - start - seconds
    print(
        f"    event pipeline: every consumer had {got:.0f}/{want} events {lag:.1f} s after "
        "the last delivery (the CPU below runs to then)",
        flush=True,
    )
    return Result(label, len(nodes), messages, seconds, meter.spent(), os.getloadavg())


@contextmanager
def started(workdirs: list[Path], cfg: dict[str, Any]) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        for w in workdirs:
            w.mkdir()
            nodes.append(NodeProcess(w, cfg).start(90))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def cluster_run(
    label: str, count: int, base: Path, env: dict[str, Any], args: argparse.Namespace
) -> Result:
    """A datacenter (streams) and a PostgreSQL database of the run's own: no run's
    pipeline reads or stores another's events."""
    admin = admin_dsn(os.environ)
    with ExitStack() as stack:
        dsn = stack.enter_context(fresh_database(admin))
        pg = PgBackends(admin, dsn.rsplit("/", 1)[1].split("?")[0])
        stack.callback(pg.close)
        cluster = {"nats": env["nats"].urls, "postgres": dsn, "datacenter": label[:1]}
        cfg = node_config(env["sink"].port, cluster)
        print(f"{label}: starting {count} cluster node(s)", flush=True)
        nodes = stack.enter_context(started([base / f"{label}{i}" for i in range(count)], cfg))
        key = nodes[0].create_key()
        for node in nodes[1:]:
            wait_key(node, key)
        meter = Meter(nodes, env["nats"], pg, env["sink"])
        return measure(label, nodes, key, meter, args.n, args.size)


def embedded_run(base: Path, env: dict[str, Any], args: argparse.Namespace) -> Result:
    print("embedded: starting one embedded node", flush=True)
    with started([base / "embedded"], node_config(env["sink"].port, None)) as nodes:
        key = nodes[0].create_key()
        meter = Meter(nodes, None, None, env["sink"])
        return measure("embedded, 1 node", nodes, key, meter, args.n, args.size)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument("--messages", type=int, default=30_000, help="messages per run")
    ap.add_argument("--size", type=int, default=2048, help="message size in bytes")
    ap.add_argument("--no-embedded", action="store_true", help="skip the embedded run")
    args = ap.parse_args(argv)
    args.n = max(args.messages // PER_REQUEST // 2 * 2, 2) * PER_REQUEST  # even split
    results: list[Result] = []
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pl-cluster-")))
        print("starting 3 nats-servers (R3) and smtp-sink", flush=True)
        env: dict[str, Any] = {"nats": stack.enter_context(nats_cluster(3))}
        env["sink"] = stack.enter_context(SmtpSink())
        print(
            f"  nats {' '.join(env['nats'].urls)}; smtp-sink on port {env['sink'].port}; "
            f"{args.n} messages of {args.size} bytes per run; {os.cpu_count()} cores; load "
            f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        results.append(cluster_run("a: cluster, 1 node", 1, base, env, args))
        print(results[-1].report(), flush=True)
        results.append(cluster_run("b: cluster, 2 nodes", 2, base, env, args))
        print(results[-1].report(), flush=True)
        if not args.no_embedded:
            results.append(embedded_run(base, env, args))
            print(results[-1].report(), flush=True)
    print("\nsummary (end to end; CPU-s per million messages, harness excluded):")
    for r in results:
        print(
            f"  {r.label:<20} {r.rate:7.0f} msg/s  {r.rate / r.nodes:7.0f} msg/s/node  "
            f"postline {r.per_million(r.postline_cpu()):6.0f}  "
            f"all {r.per_million(r.system_cpu()):6.0f}"
            f"  nodes for 10^9/day {PER_DAY / (r.rate / r.nodes):5.1f}  load {r.load[0]:.2f}"
        )
    if len(results) >= 2:
        print(f"  2 nodes / 1 node: {results[1].rate / results[0].rate:.2f}x (2 shared cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
