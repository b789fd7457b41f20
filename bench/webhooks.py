"""``postline bench webhooks``: events per second delivered to one webhook on loopback.

1. A counting receiver runs in a process of its own (``python -m
   postline.webhooks.receiver``: aiohttp, answers 200, counts ``sg_event_id``).
2. In this process: the SQLite spool's event log, the webhooks component of the event
   pipeline (its store, aiohttp session and dispatcher: the code a node runs) and one
   webhook for ``delivered`` and ``processed``, signed unless ``--unsigned``.
3. ``--events`` events (``delivered``, ~330 bytes each, SendGrid's wire format) are
   appended to the log through ``Spool.record`` (10,000 per transaction) while the webhook
   is disabled; then it is enabled and the time until the receiver has counted every event
   gives the delivery rate (a backlog drained at full speed).
4. The same again with the webhook enabled while the events are appended (live: the
   dispatcher keeps up with the writer).

Target: >= 50,000 events/s (issue 14). No peer runs locally: SendGrid posts a batch per
30 s or 768 KB per sending server (sendgrid-compat.md §2.1).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from postline.backends.sqlite.spool import SqliteSpool, open_sqlite_spool
from postline.config import Config, SpoolConfig, from_dict
from postline.events.consumer import RunnerSet
from postline.events.pipeline import PipelineContext
from postline.model.events import EventRecord, make_event
from postline.webhooks.component import WebhooksComponent
from postline.webhooks.settings import WebhookRequest

TARGET = 50_000
CHUNK = 10_000  # events per Spool.record transaction


def _events(n: int, tag: str) -> list[EventRecord]:
    now = time.time()
    extra = {"response": "250 2.0.0 Ok: queued as 4Xk2", "ip": "192.0.2.10", "tls": 1}
    return [
        make_event(
            "delivered",
            tenant="bench",
            email=f"user{i}@example{i % 7}.com",
            ts=now,
            sg_message_id=f"{tag}msg{i}.pl1.0",
            smtp_id=f"<{tag}msg{i}@pl1>",
            categories=["bench"],
            custom_args={"campaign": "bench"},
            extra=extra,
        )
        for i in range(n)
    ]


class Receiver:
    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "postline.webhooks.receiver"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "webhook receiver on http://127.0.0.1:<port>/"
        self.port = int(line.rstrip().rstrip("/").rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def count(self) -> tuple[int, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/count", timeout=5) as r:
            events, posts = r.read().split()
        return int(events), int(posts)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


async def _wait_for(receiver: Receiver, total: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        events, _ = await asyncio.to_thread(receiver.count)
        if events >= total:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the receiver has {receiver.count()[0]} of {total} events")


async def _append(spool: SqliteSpool, events: list[EventRecord]) -> float:
    start = time.perf_counter()
    for i in range(0, len(events), CHUNK):
        await spool.record(events[i : i + CHUNK], [])
    return time.perf_counter() - start


async def _run(data_dir: Path, cfg: Config, n: int, signed: bool, receiver: Receiver) -> int:
    spool = await open_sqlite_spool(str(data_dir), SpoolConfig())
    runners = RunnerSet(spool)
    component = WebhooksComponent(PipelineContext(cfg, data_dir, spool, runners))
    await component.start()
    svc = component.service
    assert svc is not None
    try:
        req = WebhookRequest(url=receiver.url, enabled=False, delivered=True, processed=True)
        hook = await svc.create("bench", req)
        if signed:
            await svc.set_signed("bench", hook.id, True)

        took = await _append(spool, _events(n, "a"))
        print(f"  appended {n:,} events to the log: {n / took:,.0f} events/s", flush=True)
        start = time.perf_counter()
        await svc.update("bench", hook.id, WebhookRequest(enabled=True))
        end = await _wait_for(receiver, n, 600)
        backlog = n / (end - start)
        _, posts = await asyncio.to_thread(receiver.count)
        print(f"  backlog drained: {backlog:,.0f} events/s ({posts:,} posts)", flush=True)

        start = time.perf_counter()
        await _append(spool, _events(n, "b"))
        end = await _wait_for(receiver, 2 * n, 600)
        live = n / (end - start)
        print(f"  live (appended while delivering): {live:,.0f} events/s", flush=True)
    finally:
        await component.close()
        await runners.close()
        await spool.close()
    rate = min(backlog, live)
    verdict = "ok" if rate >= TARGET else "BELOW TARGET"
    print(f"webhook delivery: {rate:,.0f} events/s (target >= {TARGET:,}): {verdict}")
    print("peer: none locally (SendGrid: a post per 30 s or 768 KB per sending server)")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench webhooks", description=__doc__)
    ap.add_argument("--events", type=int, default=200_000, help="events per run")
    ap.add_argument("--unsigned", action="store_true", help="do not sign the posts")
    ap.add_argument("--batch-events", type=int, default=1000, help="[webhooks] batch_events")
    args = ap.parse_args(argv)
    hooks = {"allow_private": True, "batch_events": args.batch_events}
    receiver = Receiver()
    try:
        with tempfile.TemporaryDirectory(prefix="pl-bench-webhooks-", dir=".") as tmp:
            cfg = from_dict({"data_dir": tmp, "webhooks": hooks})
            signed = "unsigned" if args.unsigned else "signed"
            print(f"webhooks: {args.events:,} events, one {signed} webhook, loopback receiver")
            return asyncio.run(_run(Path(tmp), cfg, args.events, not args.unsigned, receiver))
    finally:
        receiver.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
