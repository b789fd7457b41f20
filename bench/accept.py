"""``postline bench accept``: accepted recipients per second with fsync on, over HTTP.

Starts a node (delivery off, ``spool.fsync = true``) in its own process, drives it with
keep-alive connections replaying single-recipient and 100-personalization requests, and
prints the rates beside the raw fsync rate of the same disk (the peer figure for the
storage). Targets: >= 3,000 requests/s single-recipient, >= 20,000
recipients/s with 100-personalization requests, on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.fsync_rate import fsync_rate
from bench.loadgen import LoadResult, build_request, run_load
from postline.testing.node import NodeProcess


def mail(personalizations: int, tag: str) -> bytes:
    body: dict[str, Any] = {
        "personalizations": [
            {
                "to": [{"email": f"user{i}@example{i % 7}.com", "name": f"User {i}"}],
                "substitutions": {"-name-": f"User {i}"},
            }
            for i in range(personalizations)
        ],
        "from": {"email": "sender@example.com", "name": "Sender"},
        "subject": f"Benchmark {tag} -name-",
        "content": [
            {"type": "text/plain", "value": "Hello -name-, " + "x" * 900},
            {"type": "text/html", "value": "<p>Hello -name-</p>" + "<b>y</b>" * 100},
        ],
        "categories": ["bench"],
        "custom_args": {"campaign": "bench"},
    }
    return json.dumps(body).encode()


def _report(label: str, res: LoadResult, per_request: int) -> dict[str, float]:
    bad = {s: n for s, n in res.statuses.items() if s != 202}
    print(
        f"  {label:<28} {res.rate:>9.0f} req/s  {res.rate * per_request:>9.0f} recipients/s"
        f"  p50 {res.percentile(50) * 1000:6.1f} ms  p99 {res.percentile(99) * 1000:6.1f} ms"
        + (f"  NON-202: {bad}" if bad else ""),
        flush=True,
    )
    return {"req_per_s": res.rate, "rcpt_per_s": res.rate * per_request}


async def _drive(port: int, key: str, seconds: float, conns: int) -> dict[str, dict[str, float]]:
    out = {}
    for n, c in ((1, conns), (100, max(4, conns // 4))):
        req = build_request("127.0.0.1", "/v3/mail/send", mail(n, f"p{n}"), key)
        await run_load(port, lambda r=req: r, seconds=min(1.0, seconds / 5), connections=c)  # warm
        res = await run_load(port, lambda r=req: r, seconds=seconds, connections=c)
        out[f"p{n}"] = _report(f"{n} personalization(s), {c} conns", res, n)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench accept", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    ap.add_argument("--connections", type=int, default=64, help="client connections")
    ap.add_argument("--dir", help="where the node's data goes (default: a temp dir on /work)")
    ap.add_argument("--no-fsync", action="store_true", help="spool.fsync = false (compare)")
    args = ap.parse_args(argv)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        return _run(Path(args.dir), args)
    with tempfile.TemporaryDirectory(prefix="pl-bench-", dir=".") as tmp:
        return _run(Path(tmp), args)


def _run(base: Path, args: argparse.Namespace) -> int:
    print(f"disk: raw write+fsync rate in {base}: ", end="", flush=True)
    raw = fsync_rate(str(base), 2.0)
    print(f"{raw:.0f} fsyncs/s", flush=True)
    node = NodeProcess(
        base, {"delivery": {"enabled": False}, "spool": {"fsync": not args.no_fsync}}
    )
    node.start()
    try:
        key = node.create_key()
        print(f"accept path, fsync={'off' if args.no_fsync else 'on'}, {args.seconds:.0f}s each:")
        res = asyncio.run(_drive(node.http_port, key, args.seconds, args.connections))
    finally:
        node.stop()
    single = res["p1"]["req_per_s"]
    bulk = res["p100"]["rcpt_per_s"]
    print(
        f"summary: single-recipient {single:.0f} req/s (target 3000, {single / 3000:.2f}x), "
        f"100-personalization {bulk:.0f} recipients/s (target 20000, {bulk / 20000:.2f}x), "
        f"raw fsync {raw:.0f}/s (group commit: one fsync serves many requests)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
