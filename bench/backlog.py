"""``postline bench backlog``: a million queued for a dead destination, another one flowing.

1. A node routes ``down.test`` to a closed port and everything else to ``smtp-sink``.
2. Baseline: N messages to the healthy destination, end-to-end rate.
3. Backlog: ``--backlog`` messages (default 1,000,000) accepted for ``down.test``.
4. With the backlog queued: N more to the healthy destination, end-to-end rate.
5. Restart the node with the backlog on disk: seconds until it accepts again and until a
   fresh message to the healthy destination is delivered.
Prints the rates, their ratio, the node's peak RSS (target < 1 GiB) and the restart times
(target: delivering again within 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.e2e import PER_REQUEST, metrics, request_body
from bench.loadgen import build_request, run_load
from bench.procstat import peak_rss_mb
from bench.sink import SmtpSink, free_port
from postline.testing.node import NodeProcess


def inject(node: NodeProcess, key: str, messages: int, domain: str | None, tag: int) -> float:
    """Accept ``messages`` over HTTP; returns seconds taken."""
    requests = messages // PER_REQUEST
    body = request_body(tag, 2048, domain)
    req = build_request("127.0.0.1", "/v3/mail/send", body, key)
    start = time.perf_counter()
    done = 0
    while done < requests:
        chunk = min(2000, requests - done)
        res = asyncio.run(
            run_load(node.http_port, lambda: req, seconds=3600, connections=8, max_requests=chunk)
        )
        bad = {k: v for k, v in res.statuses.items() if k != 202}
        if bad:
            raise RuntimeError(f"non-202 answers while injecting: {bad}")
        done += chunk
        if requests > 2000:
            print(f"    ... {done * PER_REQUEST} accepted", flush=True)
    return time.perf_counter() - start


def healthy_rate(node: NodeProcess, key: str, messages: int, tag: int) -> float:
    before = metrics(node.http_port).get("delivered", 0)
    start = time.perf_counter()
    inject(node, key, messages, None, tag)
    while metrics(node.http_port).get("delivered", 0) - before < messages:
        time.sleep(0.05)
    return messages / (time.perf_counter() - start)


def wait_healthz(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("node did not become healthy")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench backlog", description=__doc__)
    ap.add_argument("--backlog", type=int, default=1_000_000, help="messages for the dead site")
    ap.add_argument("--messages", type=int, default=20_000, help="healthy messages per phase")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pl-backlog-", dir=".") as tmp, SmtpSink() as sink:
        routes = {"down.test": f"127.0.0.1:{free_port()}", "*": f"127.0.0.1:{sink.port}"}
        config = {
            "delivery": {
                "routes": routes,
                "shaping": {"max_connections": 20, "max_messages_per_connection": 1000},
            }
        }
        node = NodeProcess(Path(tmp), config).start()
        try:
            key = node.create_key()
            base = healthy_rate(node, key, args.messages, 1)
            print(f"healthy destination, empty queue: {base:.0f} msg/s", flush=True)
            print(f"queueing {args.backlog} messages for down.test ...", flush=True)
            secs = inject(node, key, args.backlog, "down.test", 2)
            print(f"  accepted in {secs:.1f} s ({args.backlog / secs:.0f}/s)", flush=True)
            loaded = healthy_rate(node, key, args.messages, 3)
            print(
                f"healthy destination, {args.backlog} queued for a dead one: "
                f"{loaded:.0f} msg/s ({loaded / base:.2f}x of baseline)",
                flush=True,
            )
            assert node.proc is not None
            rss = peak_rss_mb(node.proc.pid)
            m = metrics(node.http_port)
            print(
                f"peak RSS {rss:.0f} MB (target < 1024 MB); in memory now: "
                f"ready {m.get('ready_deliveries', 0):.0f}, "
                f"in flight {m.get('inflight_deliveries', 0):.0f}"
            )
            node.stop()
            start = time.perf_counter()
            node.start(timeout=120)
            wait_healthz(node.http_port, 120)
            up = time.perf_counter() - start
            before = metrics(node.http_port).get("delivered", 0)
            inject(node, key, PER_REQUEST, None, 4)
            while metrics(node.http_port).get("delivered", 0) <= before:
                time.sleep(0.02)
            first = time.perf_counter() - start
            print(
                f"restart with the backlog: accepting after {up:.1f} s, delivering after "
                f"{first:.1f} s (target < 60 s)"
            )
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
