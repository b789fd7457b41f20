"""The datacenter drill (issue 15 item 6): two datacenters, each a 3-server NATS cluster
of its own JetStream domain joined by leafnodes (testing/nats.py ``two_datacenters``),
one real node in each, one PostgreSQL. Load on both; dc1 killed whole (its three NATS
servers and its node, SIGKILL) right after its last acknowledgement, which it gave while
dc2 was frozen; ``postline failover --from dc1`` in dc2; then every recipient dc1
acknowledged reaches a real SMTP sink (duplicates counted, none lost) and dc1's events
are in dc2's activity store (while both are up, each has the other's events). dc1 then
comes back with its old store and is fenced: it accepts and delivers nothing.

The two datacenters share one PostgreSQL database, so each stores and posts only its own
events (cluster/origins.py): every event is in the activity store once, counted once in
the statistics and posted once to the webhook; dc1's pipeline worker is stopped before
its last lot, so the events of that lot reach the stores and the webhook only through
dc2 running dc1's consumers over its mirror once failed over (cluster/adopted.py)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]
import pytest
from tests.conftest import call, simple_mail
from tests.integration.test_webhooks_delivery import S

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.nats import server_binary, two_datacenters
from postline.testing.node import NodeProcess, postline_cmd, stop_all
from postline.testing.postgres import admin_dsn, fresh_database
from postline.webhooks.receiver import WebhookReceiver

pytestmark = pytest.mark.skipif(server_binary() is None, reason="nats-server not installed")

LINKED = "datacenter copies this one's streams"  # multidc.py, once a peer mirrors us
UNLINKED = "datacenter did not confirm its copy"  # multidc.py, a peer silent for 2 s
FENCED = "datacenter failed this one over"  # multidc.py, the other ran failover


def linked(node: NodeProcess) -> bool:
    """The node's accepts wait for the other datacenter's copy (now, not just once)."""
    text = node.log_tail(10**7)
    return text.rfind(LINKED) > text.rfind(UNLINKED)


def config(urls: list[str], dsn: str, dc: str, routes: dict[str, int]) -> dict[str, Any]:
    return {
        "cluster": {"nats": urls, "postgres": dsn, "datacenter": dc},
        "webhooks": {"allow_private": True, "retry_min": "200ms", "batch_wait": "200ms"},
        "delivery": {
            "routes": {d: f"127.0.0.1:{port}" for d, port in routes.items()},
            "retry_min": "500ms",
            "retry_max": "1s",
            "max_age": "120s",
        },
        "log": {"level": "warning"},
    }


def wait_until(done: Callable[[], bool], what: Callable[[], str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


def send(node: NodeProcess, key: str, rcpts: list[str], text: str = "Hi Bob") -> None:
    mail = simple_mail()
    mail["content"] = [{"type": "text/plain", "value": text}]
    mail["personalizations"] = [{"to": [{"email": r}]} for r in rcpts]
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202, r.body


def rcpts_at(mx: FakeSmtpServer) -> list[str]:
    return [r for t in mx.transactions for r in t.rcpts]


def statuses(node: NodeProcess, key: str, rcpt: str) -> set[str]:
    query = quote(f'to_email="{rcpt}"', safe="")
    r = call(node.http_port, "GET", f"/v3/messages?query={query}&limit=10", key=key)
    assert r.status == 200, r.body
    return {m["status"] for m in r.json()["messages"]}


def test_a_datacenter_lost_whole_is_failed_over_by_the_other(tmp_path: Path) -> None:
    with (
        two_datacenters("leaf") as dcs,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer()) as mx0,
        running_in_thread(FakeSmtpServer(greeting_stall=True)) as mx1,
        running_in_thread(FakeSmtpServer()) as mx2,
        WebhookReceiver() as rx,
    ):
        # dc1 delivers first.example (to mx0) and holds the rest (mx1 stalls at the
        # greeting: queued, or leased to a stuck SMTP session); dc2 delivers all to mx2
        routes = [{"first.example": mx0.port, "*": mx1.port}, {"*": mx2.port}]
        nodes: list[NodeProcess] = []
        try:
            for d, dc in enumerate(("dc1", "dc2")):
                (tmp_path / dc).mkdir()
                cfg = config(dcs.dcs[d].urls, dsn, dc, routes[d])
                nodes.append(NodeProcess(tmp_path / dc, cfg))
            with ThreadPoolExecutor(2) as pool:  # both start at once
                list(pool.map(lambda n: n.start(60), nodes))
            a, b = nodes
            for node in nodes:  # each mirrors the other's streams and is mirrored
                wait_until(lambda n=node: linked(n), n_log(node))
            for node, peer in ((nodes[0], "dc2"), (nodes[1], "dc1")):  # and /metrics says so
                wait_until(lambda n=node, p=peer: link_gauges(n, p) == (1.0, 1.0, 0.0), n_log(node))
            key = a.create_key()  # PostgreSQL: works in both datacenters
            hook = {"url": rx.url, "enabled": True, "processed": True, "delivered": True}
            assert call(a.http_port, "POST", S, hook, key=key).status == 201

            first = [f"first-{i}@first.example" for i in range(6)]  # delivered in dc1
            send(a, key, first)
            wait_until(lambda: set(first) <= set(rcpts_at(mx0)), n_log(a))
            acked_in_dc1, acked_in_dc2 = [], []
            for i in range(12):  # load on both datacenters
                lot = [f"dc1-{i}-{j}@d{(i + j) % 4}.example" for j in range(3)]
                send(a, key, lot)
                acked_in_dc1 += lot
                lot = [f"dc2-{i}@d{i % 4}.example"]
                send(b, key, lot)
                acked_in_dc2 += lot

            # while both are up, each datacenter's store has the other's events too
            wait_until(lambda: statuses(b, key, first[0]) == {"delivered"}, n_log(b))
            wait_until(lambda: statuses(a, key, acked_in_dc2[0]) == {"delivered"}, n_log(a))

            big = "large-0@d0.example"  # a body over 512 KiB: dc1's Object Store
            send(a, key, [big], "word " * 120_000)
            acked_in_dc1.append(big)

            # refused while dc1 answers: both datacenters would deliver the same mail
            early = subprocess.run(
                postline_cmd("failover", "--from", "dc1", "--config", str(b.config_path)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert early.returncode == 3 and "still answers" in early.stderr, early

            # the last accept while dc2 is frozen for a second: its 202 comes only once
            # dc2's copy holds it (multidc.py), so after the thaw. (Without that wait it
            # comes at once; here the copy would still get it, from the socket buffers
            # of loopback, but a datacenter really lost takes those with it.)
            last = ["last-0@d0.example", "last-1@d1.example"]
            thawed = threading.Event()

            def thaw() -> None:
                thawed.set()
                dcs.freeze(1, False)

            # dc1's pipeline stops: what it accepts from here on is stored and posted only
            # from dc2, over the mirror of dc1's log, once dc1 is failed over
            wait_until(lambda: processed_posted(rx) >= len(first), lambda: f"{rx.bodies()}")
            os.kill(pipeline_worker(a), signal.SIGSTOP)
            wait_until(lambda: linked(a), n_log(a))  # (a loaded machine: 2 s is short)
            dcs.freeze(1)
            timer = threading.Timer(1.0, thaw)
            timer.start()
            try:
                send(a, key, last)
                assert thawed.is_set(), "acknowledged before dc2 could hold a copy"
                acked_in_dc1 += last
                a.kill()  # dc1 lost whole, right after its last 202
                dcs.kill(0)
            finally:
                timer.join()
            failover = subprocess.run(
                postline_cmd("failover", "--from", "dc1", "--config", str(b.config_path)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert failover.returncode == 0, failover.stdout + failover.stderr
            print(failover.stdout.strip())

            everything = set(acked_in_dc1) | set(acked_in_dc2)
            wait_until(lambda: everything <= set(rcpts_at(mx2)), lambda: missing(mx2, everything))
            got = collections.Counter(rcpts_at(mx2))
            assert set(got) == everything  # and nothing dc1 had delivered (first)
            (large,) = [t.data for t in mx2.transactions if big in t.rcpts]
            assert len(large) > 600_000  # the whole body, from dc2's mirror of the store
            duplicates = sum(n - 1 for n in got.values())
            print(f"dc1 acknowledged {len(acked_in_dc1)}, all delivered by dc2;"
                  f" {duplicates} duplicates; first lot sent again: "
                  f"{len(set(first) & set(got))}")  # fmt: skip
            # dc1's events (processed there) are in dc2's store, with dc2's delivery
            wait_until(lambda: statuses(b, key, acked_in_dc1[-1]) == {"delivered"}, n_log(b))

            # each event once in the shared stores, dc1's last lot too (adopted by dc2)
            accepted = set(first) | everything
            rows = collections.Counter[str]()

            def stored() -> bool:
                rows.clear()
                rows.update(asyncio.run(processed_rows(dsn)))
                return set(rows) == accepted

            wait_until(stored, lambda: f"{sorted(accepted ^ set(rows))} {b.log_tail()}")
            assert all(n == 1 for n in rows.values()), [r for r, n in rows.items() if n > 1]
            assert asyncio.run(duplicate_event_rows(dsn)) == 0
            counted = lambda: requests_counted(b, key)  # noqa: E731
            wait_until(lambda: counted() == len(accepted), lambda: f"{counted()} counted")
            time.sleep(0.5)  # (and no more than that)
            assert counted() == len(accepted)
            # and posted to the webhook: every recipient's processed event; dc2's own
            # events (no node of dc2 stopped) exactly once, not once per datacenter
            unposted = lambda: accepted - set(posted(rx, "processed"))  # noqa: E731
            wait_until(lambda: not unposted(), lambda: f"not posted: {sorted(unposted())}")
            twice = [r for r, n in posted(rx, "processed").items() if n > 1 and r.startswith("dc2")]
            assert twice == [], twice

            again = subprocess.run(
                postline_cmd("failover", "--from", "dc1", "--config", str(b.config_path)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert again.returncode == 0 and " 0 deliveries" in again.stdout, again.stdout

            # dc1 comes back with its old store: fenced, it neither accepts nor delivers
            # (dc2 delivers its mail now; without the fence all of it would go twice).
            # dc2's node is stopped first: dc1 finds dc2 by the mirrors of it it holds
            b.stop()
            for i in range(3):
                dcs.dcs[0].start(i)
            dcs.dcs[0].wait_ready()
            a.start(60)
            wait_until(lambda: FENCED in a.log_tail(10**7), n_log(a))
            assert link_gauges(a, "dc2")[2] == 1.0  # /metrics: fenced
            mail = simple_mail("late@d0.example")
            assert call(a.http_port, "POST", "/v3/mail/send", mail, key=key).status == 503
        finally:
            stop_all(nodes)


def pipeline_worker(node: NodeProcess) -> int:
    """The pid of the node's event pipeline worker (a child process)."""
    pid = node.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"postline.events.worker" in cmdline:
            return int(child)
    raise AssertionError(f"no pipeline worker among {children}")


def posted(rx: WebhookReceiver, event: str) -> collections.Counter[str]:
    """Recipients of the ``event`` events the receiver got, with how often."""
    return collections.Counter(
        e["email"] for p in rx.bodies() for e in json.loads(p.body) if e["event"] == event
    )


def processed_posted(rx: WebhookReceiver) -> int:
    return sum(posted(rx, "processed").values())


async def processed_rows(dsn: str) -> collections.Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT to_email FROM activity_events WHERE event = 'processed'")
    finally:
        await conn.close()
    return collections.Counter(r[0] for r in rows)


async def duplicate_event_rows(dsn: str) -> int:
    """Rows of the activity store beyond the first of each event (sg_event_id)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) - count(DISTINCT data::jsonb->>'sg_event_id') FROM activity_events"
            )
        )
    finally:
        await conn.close()


def requests_counted(node: NodeProcess, key: str) -> int:
    """The statistics' ``requests`` (processed) of today and yesterday (UTC)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    r = call(node.http_port, "GET", f"/v3/stats?start_date={day}", key=key)
    assert r.status == 200, r.body
    return sum(int(s["metrics"]["requests"]) for d in r.json() for s in d["stats"])


def link_gauges(node: NodeProcess, peer: str) -> tuple[float, ...]:
    """(link up, mirrored, fenced) from the node's /metrics."""
    text = call(node.http_port, "GET", "/metrics").body.decode()
    got = []
    for name in ("link_up", "mirrored"):
        m = re.search(rf'^postline_datacenter_{name}{{datacenter="{peer}"}} (\S+)$', text, re.M)
        got.append(float(m.group(1)) if m else -1.0)
    m = re.search(r"^postline_datacenter_fenced (\S+)$", text, re.M)
    return (*got, float(m.group(1)) if m else -1.0)


def n_log(node: NodeProcess) -> Callable[[], str]:
    return lambda: node.log_tail()


def missing(mx: FakeSmtpServer, expected: set[str]) -> str:
    return f"not delivered: {sorted(expected - set(rcpts_at(mx)))}"


def test_failover_force_takes_over_a_datacenter_that_still_answers(tmp_path: Path) -> None:
    """``failover --force``: dc1 is cut off from its destinations, not gone (its NATS and
    its node still run). Forced, dc2 delivers what dc1 held, and dc1, fenced, stops
    accepting: from then on one datacenter delivers the mail, not two."""
    with (
        two_datacenters("leaf") as dcs,
        fresh_database(admin_dsn(os.environ)) as dsn,
        running_in_thread(FakeSmtpServer(greeting_stall=True)) as stuck,
        running_in_thread(FakeSmtpServer()) as mx2,
    ):
        routes = [{"*": stuck.port}, {"*": mx2.port}]  # dc1 cannot deliver anything
        nodes: list[NodeProcess] = []
        try:
            for d, dc in enumerate(("dc1", "dc2")):
                (tmp_path / dc).mkdir()
                nodes.append(
                    NodeProcess(tmp_path / dc, config(dcs.dcs[d].urls, dsn, dc, routes[d]))
                )
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda n: n.start(60), nodes))
            a, b = nodes
            wait_until(lambda: linked(a), n_log(a))
            key = a.create_key()
            held = [f"held-{i}@d{i % 3}.example" for i in range(9)]
            send(a, key, held)

            def failover(*extra: str) -> subprocess.CompletedProcess[str]:
                cmd = postline_cmd(
                    "failover", "--from", "dc1", *extra, "--config", str(b.config_path)
                )
                return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

            refused = failover()
            assert refused.returncode == 3 and "--force" in refused.stderr, refused
            forced = failover("--force")
            assert forced.returncode == 0, forced.stdout + forced.stderr
            assert f" {len(held)} deliveries" in forced.stdout, forced.stdout
            wait_until(lambda: set(held) <= set(rcpts_at(mx2)), lambda: missing(mx2, set(held)))
            assert sorted(rcpts_at(mx2)) == sorted(held)  # once each: dc1 delivered none

            # dc1 learns it was failed over: it refuses new mail (dc2 has its work now)
            wait_until(lambda: FENCED in a.log_tail(10**7), n_log(a))
            wait_until(lambda: link_gauges(a, "dc2")[2] == 1.0, n_log(a))
            mail = simple_mail("after@d0.example")
            assert call(a.http_port, "POST", "/v3/mail/send", mail, key=key).status == 503
            again = failover("--force")  # nothing adopted twice
            assert again.returncode == 0 and " 0 deliveries" in again.stdout, again.stdout
        finally:
            stop_all(nodes)
