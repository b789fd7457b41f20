"""``postline status``: the node, its queue by destination (like qshape), rates, lags."""

from __future__ import annotations

import argparse
import time
from typing import Any

from postline.backends.sqlite import inspect
from postline.ops import render
from postline.ops.context import Context, NodeState, add_config, add_json, context, node_state

EPILOG = """examples:
  postline status                        # ./postline-data, or:
  postline status --config postline.toml
  postline status --top 0 --json | jq '.destinations[] | select(.deferred > 0)'

The destination table counts pending deliveries per recipient domain: due (may go now),
deferred (waiting for a retry), scheduled (send_at in the future), in flight (held by
the node), and their ages since acceptance in minutes, like Postfix's qshape.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="the node, its queue per destination (qshape-like), delivery rates",
        description="Show whether a node runs on the data directory, its listeners, the "
        "queue per destination domain with ages, outcomes per minute and consumer lags. "
        "Reads the spool without stopping or locking the node.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--top", type=int, default=10, metavar="N", help="destinations shown (0: all; default 10)"
    )
    add_config(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    if ctx.cfg.clustered:  # the queue lives in JetStream, not spool.db
        from postline.cluster import status as cluster_status

        return cluster_status.run(args, ctx)
    node = node_state(ctx)
    now = time.time()
    conn = ctx.read()
    try:
        shape = inspect.queue_shape(conn, now)
        totals = inspect.totals(conn)
    finally:
        conn.close()
    report = build(ctx, node, shape, totals, now, args.top)
    if args.json:
        render.print_json(report)
    else:
        print(text(report, now))
    return 0


def destination_json(q: inspect.DomainQueue, now: float) -> dict[str, Any]:
    labels = [str(m) for m in inspect.AGE_BUCKETS] + [f"{inspect.AGE_BUCKETS[-1]}+"]
    return {
        "domain": q.domain,
        "total": q.total,
        "due": q.due,
        "deferred": q.deferred,
        "scheduled": q.scheduled,
        "inflight": q.inflight,
        "oldest_age": round(now - q.oldest, 3),
        "next_retry": q.next_retry,
        "tenants": q.tenants,
        "ages_minutes": dict(zip(labels, q.ages, strict=True)),
    }


def build(
    ctx: Context,
    node: NodeState,
    shape: list[inspect.DomainQueue],
    totals: inspect.Totals,
    now: float,
    top: int,
) -> dict[str, Any]:
    info = node.info or {}
    oldest = min((q.oldest for q in shape), default=None)
    return {
        "data_dir": str(ctx.data_dir),
        "node": {
            "running": node.running,
            "pid": node.pid,
            "pid_alive": node.pid_alive,
            "version": info.get("version"),
            "started_at": info.get("started_at"),
            "listeners": info.get("listeners", {}),
            "delivery": info.get("delivery"),
            "sites": info.get("sites", []),
            "pipeline": info.get("pipeline", {}),
        },
        "queue": {
            "total": sum(q.total for q in shape),
            "due": sum(q.due for q in shape),
            "deferred": sum(q.deferred for q in shape),
            "scheduled": sum(q.scheduled for q in shape),
            "inflight": sum(q.inflight for q in shape),
            "domains": len(shape),
            "oldest_age": None if oldest is None else round(now - oldest, 3),
        },
        "destinations": [destination_json(q, now) for q in (shape[:top] if top else shape)],
        "rates_per_minute": info.get("rates_per_minute", {}),
        "totals": totals.counters,
        "events": totals.events,
        "last_event_at": totals.last_event,
        "consumers": [
            {"name": n, "lag": lag, "lag_seconds": 0.0 if ts is None else round(now - ts, 3)}
            for n, (lag, ts) in sorted(totals.consumers.items())
        ],
    }


def text(r: dict[str, Any], now: float) -> str:
    lines = [*_node_lines(r), *_queue_lines(r["queue"])]
    for i, figures in enumerate(r["rates_per_minute"].values()):
        over = render.duration(figures["seconds"])
        lines.append(f"{'' if i else 'per minute':<10} over the last {over}: {_per_min(figures)}")
    t = r["totals"]
    lines.append(
        f"{'totals':<10} {t.get('delivered', 0)} delivered, {t.get('bounced', 0)} bounced, "
        f"{t.get('expired', 0)} expired, {t.get('dropped', 0)} dropped (since the spool began);"
        f" last event {render.relative(r['last_event_at'], now)}"
    )
    consumers = ", ".join(
        f"{c['name']} {c['lag']} behind" + (f" ({c['lag_seconds']:.0f}s)" if c["lag"] else "")
        for c in r["consumers"]
    )
    lines.append(f"{'consumers':<10} {consumers or 'none yet'}")
    if r["destinations"]:
        lines += ["", _destinations(r["destinations"], now)]
    return "\n".join(lines)


def _node_lines(r: dict[str, Any]) -> list[str]:
    n = r["node"]
    if n["running"]:
        up = render.duration(time.time() - (n["started_at"] or time.time()))
        state = f"running, pid {n['pid']}, version {n['version']}, up {up}"
        if not n["delivery"]:
            state += " (delivery disabled: accepting and spooling only)"
    elif n["pid_alive"]:
        state = f"pid {n['pid']} is alive but does not answer on its control socket (starting?)"
    else:
        state = "not running" + (f" (pid {n['pid']} in node.json is gone)" if n["pid"] else "")
    listeners = ", ".join(f"{k} {v}" for k, v in n["listeners"].items()) or "-"
    lines = [f"{'node':<10} {state}", f"{'listeners':<10} {listeners}"]
    lines.append(f"{'data_dir':<10} {r['data_dir']}")
    p = n.get("pipeline") or {}
    if p.get("where") == "worker":
        state = "up" if p["up"] else "DOWN (restarting)"
        lines.append(
            f"{'pipeline':<10} worker pid {p['pid']}, {state}, restarted {p['restarts']} times"
        )
    elif p:
        lines.append(f"{'pipeline':<10} {'in the node process' if p['where'] == 'node' else 'off'}")
    for s in n["sites"]:
        lines.append(
            f"{'site':<10} {s['site']}: {s['state']}, {s['sessions']} sessions (limit "
            f"{s['concurrency']}), {s['ready']} ready, {s['inflight']} sending"
        )
    return lines


def _queue_lines(q: dict[str, Any]) -> list[str]:
    oldest = "" if q["oldest_age"] is None else f"; oldest {render.duration(q['oldest_age'])}"
    return [
        f"{'queue':<10} {q['total']} pending in {q['domains']} domain(s): {q['due']} due, "
        f"{q['deferred']} deferred, {q['scheduled']} scheduled, {q['inflight']} in flight"
        f"{oldest}"
    ]


def _per_min(f: dict[str, float]) -> str:
    return ", ".join(f"{f[k]:g} {k}" for k in ("delivered", "deferred", "bounced", "expired"))


def _destinations(dests: list[dict[str, Any]], now: float) -> str:
    ages = list(dests[0]["ages_minutes"])
    headers = ["DOMAIN", "TOTAL", "DUE", "DEFERRED", "SCHED", "FLIGHT", "OLDEST", "RETRY", *ages]
    rows = [
        [
            d["domain"],
            d["total"],
            d["due"],
            d["deferred"],
            d["scheduled"],
            d["inflight"],
            render.duration(d["oldest_age"]),
            render.relative(d["next_retry"], now),
            *d["ages_minutes"].values(),
        ]
        for d in dests
    ]
    return "destinations (ages in minutes since acceptance, like qshape):\n" + render.table(
        headers, rows
    )
