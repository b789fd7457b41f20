"""``postline bench e2e``: HTTP in, SMTP out, beside Postfix on the same messages.

Postline: requests of 100 personalizations (2 KB messages, each recipient unique) go to a
node whose every route points at Postfix's ``smtp-sink``; the clock runs from the first
request to the last ``delivered`` outcome. Postfix: the same number of messages through a
private Postfix instance relaying to an ``smtp-sink``, fed 20 parallel sessions by
``smtp-source -d -s 20 -l 2048`` (bench/postfix_peer.py). Prints both rates, the ratio,
CPU-seconds per million messages and peak memory. Target: >= 5x the best peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import build_request, run_load
from bench.procstat import peak_rss_mb
from bench.sink import SmtpSink, proc_cpu_seconds
from postline.testing.node import NodeProcess
from postline.testing.scrape import scrape

PER_REQUEST = 100


@dataclass
class RunResult:
    label: str
    messages: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds / self.messages * 1e6

    def line(self) -> str:
        return (
            f"  {self.label:<24} {self.messages:>8} msgs {self.seconds:7.2f} s"
            f" {self.rate:9.0f} msg/s"
            f"  {self.cpu_per_million:8.0f} CPU-s/M msgs  peak {self.peak_rss_mb:7.1f} MB"
        )


def request_body(batch: int, size: int, domain: str | None = None) -> bytes:
    """100 personalizations, one unique recipient each (spread over 10 domains by default)."""
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40)[: size - 200]
    body: dict[str, Any] = {
        "personalizations": [
            {"to": [{"email": f"u{batch}x{i}@{domain or f'example{i % 10}.com'}"}]}
            for i in range(PER_REQUEST)
        ],
        "from": {"email": "bench@example.com", "name": "Bench"},
        "subject": f"Benchmark message {batch}",
        "content": [{"type": "text/plain", "value": text}],
    }
    return json.dumps(body).encode()


def metrics(port: int) -> dict[str, float]:
    return scrape(port)


def _dkim_config(workdir: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = workdir / "dkim.pem"
    path.write_bytes(pem)
    return {"example.com": {"selector": "bench", "private_key": str(path)}}


def run_postline(
    messages: int,
    sink_port: int,
    workdir: Path,
    dkim: bool,
    size: int,
    log_level: str = "info",
    pipeline: str = "default",
    webhook_url: str = "",
    webhook_events: Callable[[], int] | None = None,
) -> RunResult:
    """``pipeline``: "default" (as configured out of the box), "off" (no activity store,
    no stats) or "all" (both, plus ``webhook_url`` as an enabled webhook for every event)."""
    delivery: dict[str, Any] = {
        "routes": {"*": f"127.0.0.1:{sink_port}"},
        "shaping": {"max_connections": 20, "max_messages_per_connection": 1000},
    }
    if dkim:
        delivery["dkim"] = _dkim_config(workdir)
    # As deployed: info level, one JSON line per outcome (to node.log in the workdir).
    cfg: dict[str, Any] = {"delivery": delivery, "log": {"level": log_level}}
    if pipeline == "off":
        cfg.update(activity={"enabled": False}, stats={"enabled": False})
    if pipeline == "all":
        cfg["webhooks"] = {"allow_private": True}
    node = NodeProcess(workdir, cfg).start()
    try:
        key = node.create_key()
        if pipeline == "all":
            add_webhook(node.http_port, key, webhook_url)
        requests = messages // PER_REQUEST
        bodies = [request_body(i, size) for i in range(requests)]
        reqs = [build_request("127.0.0.1", "/v3/mail/send", b, key) for b in bodies]
        it = iter(reqs)
        assert node.proc is not None
        pid = node.proc.pid
        cpu0 = proc_cpu_seconds(pid, children=True)
        start = time.perf_counter()
        load = asyncio.run(
            run_load(
                node.http_port, lambda: next(it), seconds=3600, connections=8, max_requests=requests
            )
        )
        accepted = time.perf_counter() - start
        print(
            f"    accepted {requests * PER_REQUEST} in {accepted:.2f} s "
            f"({requests * PER_REQUEST / accepted:.0f}/s), statuses {dict(load.statuses)}",
            flush=True,
        )
        delivered = 0.0
        last_print = time.perf_counter()
        while delivered < messages:
            m = metrics(node.http_port)
            delivered = m.get("delivered", 0) + m.get("bounced", 0) + m.get("expired", 0)
            if time.perf_counter() - last_print > 5:
                print(f"    ... {delivered:.0f}/{messages} delivered", flush=True)
                last_print = time.perf_counter()
            if delivered < messages:
                time.sleep(0.05)
        seconds = time.perf_counter() - start
        cpu = proc_cpu_seconds(pid, children=True) - cpu0
        if webhook_events is not None:
            _pipeline_catch_up(pid, 2 * messages, webhook_events, start + seconds)
        label = "postline" + (" + DKIM" if dkim else "")
        label += {"off": " (no pipeline)", "all": " + all consumers"}.get(pipeline, "")
        return RunResult(label, messages, seconds, cpu, peak_rss_mb(pid))
    finally:
        node.stop()


def _worker_pid(node_pid: int) -> int | None:
    try:
        children = Path(f"/proc/{node_pid}/task/{node_pid}/children").read_text().split()
        for child in children:
            if b"postline.events.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    except OSError:
        pass
    return None


def _pipeline_catch_up(
    node_pid: int, want: int, got: Callable[[], int], mail_done: float, timeout: float = 600
) -> None:
    """How long after the last delivery the webhook had every event (processed and
    delivered of each message), and the worker's CPU for the whole run."""
    worker = _worker_pid(node_pid)
    while got() < want and time.perf_counter() - mail_done < timeout:
        time.sleep(0.05)
    lag = time.perf_counter() - mail_done
    cpu = proc_cpu_seconds(worker) if worker else float("nan")
    print(
        f"    pipeline: the webhook had {got()}/{want} events {lag:.2f} s after the last "
        f"delivery; worker CPU {cpu:.1f} s ({cpu / (want / 2) * 1e6:.0f} CPU-s/M msgs)",
        flush=True,
    )


EVENT_TYPES = (
    "bounce",
    "click",
    "deferred",
    "delivered",
    "dropped",
    "group_resubscribe",
    "group_unsubscribe",
    "open",
    "processed",
    "spam_report",
    "unsubscribe",
)


def add_webhook(port: int, key: str, url: str) -> None:
    import urllib.request

    body = {"enabled": True, "url": url, **{t: True for t in EVENT_TYPES}}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/user/webhooks/event/settings",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.read()


def pipeline_cost(n: int, size: int, sink_port: int, base: Path, log_level: str, runs: int) -> None:
    """The event pipeline's cost: the same load with no consumers and with every consumer
    plus a webhook to a local receiver, alternating, ``runs`` times each."""
    from postline.webhooks.receiver import WebhookReceiver

    off: list[RunResult] = []
    on: list[RunResult] = []
    with WebhookReceiver(count_only=True) as hook:
        url = hook.url
        for i in range(runs):
            for mode, out in (("off", off), ("all", on)):
                work = base / f"p{i}{mode}"
                work.mkdir()
                start_count = hook.events

                def got(base: int = start_count) -> int:
                    return hook.events - base

                out.append(
                    run_postline(
                        n,
                        sink_port,
                        work,
                        False,
                        size,
                        log_level,
                        mode,
                        url,
                        got if mode == "all" else None,
                    )
                )
                print(out[-1].line(), flush=True)
        print(f"    webhook receiver got {hook.events} events in {hook.attempts} posts", flush=True)
    best_off = max(r.rate for r in off)
    best_on = max(r.rate for r in on)
    print(
        f"pipeline cost: best {best_on:.0f} msg/s with every consumer and a webhook against "
        f"{best_off:.0f} without: {100 * (1 - best_on / best_off):.1f}% slower "
        f"(target < 10%); CPU-s/M {min(r.cpu_per_million for r in on):.0f} vs "
        f"{min(r.cpu_per_million for r in off):.0f}"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench e2e", description=__doc__)
    ap.add_argument("--messages", type=int, default=50_000, help="messages per run")
    ap.add_argument("--size", type=int, default=2048, help="message size in bytes")
    ap.add_argument("--no-dkim-run", action="store_true", help="skip the DKIM-on run")
    ap.add_argument("--no-postfix", action="store_true", help="skip the Postfix peer run")
    ap.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the node's log level (info: a line per outcome, as deployed; default %(default)s)",
    )
    ap.add_argument(
        "--pipeline",
        type=int,
        default=0,
        metavar="RUNS",
        help="instead: measure the event pipeline's cost (RUNS alternating runs without "
        "consumers and with every consumer plus a webhook; no DKIM, no Postfix)",
    )
    args = ap.parse_args(argv)
    n = args.messages // PER_REQUEST * PER_REQUEST
    if args.pipeline:
        with tempfile.TemporaryDirectory(prefix="pl-e2e-", dir=".") as tmp, SmtpSink() as sink:
            print(f"smtp-sink on port {sink.port}; {n} messages of {args.size} bytes", flush=True)
            pipeline_cost(n, args.size, sink.port, Path(tmp), args.log_level, args.pipeline)
        return 0
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="pl-e2e-", dir=".") as tmp:
        base = Path(tmp)
        with SmtpSink() as sink:
            print(f"smtp-sink on port {sink.port}; {n} messages of {args.size} bytes", flush=True)
            print("postline, DKIM off:", flush=True)
            (base / "a").mkdir()
            results.append(run_postline(n, sink.port, base / "a", False, args.size, args.log_level))
            print(results[-1].line(), flush=True)
            if not args.no_dkim_run:
                print("postline, DKIM on (RSA-2048):", flush=True)
                (base / "b").mkdir()
                dk = run_postline(n, sink.port, base / "b", True, args.size, args.log_level)
                results.append(dk)
                print(results[-1].line(), flush=True)
        if not args.no_postfix:
            from bench.postfix_peer import run_postfix

            print("postfix -> smtp-sink, fed by smtp-source -d -s 20 -l 2048:", flush=True)
            peer = run_postfix(n, size=args.size, sessions=20)  # in the system temp dir
            pf = RunResult(
                "postfix", peer.messages, peer.seconds, peer.cpu_seconds, peer.peak_rss_mb
            )
            print(
                pf.line() + f" (RSS summed over ~40 processes; PSS {peer.peak_pss_mb:.0f} MB)",
                flush=True,
            )
            for r in results:
                print(
                    f"ratio {r.label} / postfix: {r.rate / pf.rate:.2f}x throughput, "
                    f"{pf.cpu_per_million / r.cpu_per_million:.2f}x less CPU per message"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
