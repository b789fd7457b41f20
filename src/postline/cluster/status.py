"""``postline status`` on a cluster node: the mode, its backends, the NATS servers and
streams (replicas, leader, how current each replica is), and the node on this data dir.

The live nodes, the deepest destination queues of the whole cluster (depth, oldest, next
due, owner) and the event consumers' lags come from the node running on this data dir (its
control socket: every node indexes the whole cluster's spool, cluster/report.py); without
a running node they are not shown. ``postline status`` dispatches here when ``[cluster]``
is set; ``python -m postline.cluster.status [--config FILE] [--json]`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from nats.js.errors import NotFoundError

from postline import config as config_mod
from postline.backends.jetstream.connect import connect_briefly
from postline.backends.jetstream.records import Names
from postline.cluster.backends import prefix
from postline.config import Config
from postline.ops import render
from postline.ops.context import Context, OpsError, context, node_state

TIMEOUT = 5.0


async def streams(cfg: Config) -> dict[str, Any]:
    """The NATS server answering and each stream of this datacenter, as a dict."""
    assert cfg.cluster is not None

    nc = await connect_briefly(cfg.cluster.nats, timeout=TIMEOUT, attempts=1)
    try:
        js = nc.jetstream(timeout=TIMEOUT)
        names = Names(prefix(cfg.cluster))
        out: list[dict[str, Any]] = []
        for name in (names.spool, names.msgs, names.events):
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                out.append({"name": name, "exists": False})
                continue
            cl = info.cluster
            out.append({
                "name": name,
                "exists": True,
                "replicas": info.config.num_replicas,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "leader": cl.leader if cl else None,
                "peers": [
                    {"name": p.name, "current": p.current, "lag": p.lag}
                    for p in ((cl.replicas or []) if cl else [])
                ],
            })  # fmt: skip
        consumers: list[dict[str, Any]] = []
        if out[-1]["exists"]:  # the pipeline readers' durable consumers (cursors.py)
            for c in await js.consumers_info(names.events):
                consumers.append({
                    "name": c.name,
                    "pending": c.num_pending,  # events messages not yet read
                    "delivered_seq": c.delivered.stream_seq if c.delivered else 0,
                })  # fmt: skip
        server = nc._server_info  # the INFO the connected server sent
        return {
            "connected_to": nc.connected_url.netloc if nc.connected_url else None,
            "server_name": server.get("server_name"),
            "nats_cluster": server.get("cluster"),
            "servers_known": len(nc.servers),
            "streams": out,
            "consumers": sorted(consumers, key=lambda c: str(c["name"])),
        }
    finally:
        await nc.close()


def build(ctx: Context) -> dict[str, Any]:
    cluster = ctx.cfg.cluster
    assert cluster is not None
    node = node_state(ctx)
    try:
        nats_part: dict[str, Any] = asyncio.run(asyncio.wait_for(streams(ctx.cfg), 20.0))
    except Exception as exc:  # a status must say what is wrong, not crash
        nats_part = {"error": f"{type(exc).__name__}: {exc}"}
    dsn = cluster.postgres
    return {
        "mode": "cluster",
        "datacenter": cluster.datacenter,
        "replicas": cluster.stream_replicas,
        "backends": {"spool": "jetstream", "events": "jetstream", "keys": "postgresql"},
        "nats": {"servers": cluster.nats, **nats_part},
        "postgres": dsn.rpartition("@")[2] if "@" in dsn else dsn.partition("://")[2],
        "data_dir": str(ctx.data_dir),
        "node": {
            "running": node.running,
            "pid": node.pid,
            "pid_alive": node.pid_alive,
            "listeners": (node.info or {}).get("listeners", {}),
            "sites": (node.info or {}).get("sites", []),
        },
        "cluster": (node.info or {}).get("cluster"),
        "lags": (node.info or {}).get("lags", {}),
    }


def text(r: dict[str, Any]) -> str:
    n = r["node"]
    state = f"running, pid {n['pid']}" if n["running"] else "not running"
    b = r["backends"]
    lines = [
        f"{'mode':<10} cluster mode, datacenter {r['datacenter']}, replicas {r['replicas']}",
        f"{'backends':<10} spool {b['spool']}, events {b['events']}, keys {b['keys']}",
        f"{'node':<10} {state}; listeners "
        + (", ".join(f"{k} {v}" for k, v in n["listeners"].items()) or "-"),
        f"{'data_dir':<10} {r['data_dir']}",
        f"{'postgres':<10} {r['postgres']}",
    ]
    nts = r["nats"]
    if "error" in nts:
        lines.append(f"{'nats':<10} {', '.join(nts['servers'])}: UNREACHABLE ({nts['error']})")
        return "\n".join(lines)
    lines.append(
        f"{'nats':<10} connected to {nts['server_name']} ({nts['connected_to']}), cluster "
        f"{nts['nats_cluster']}, {nts['servers_known']} server(s) known"
    )
    rows = []
    for s in nts["streams"]:
        if not s["exists"]:
            rows.append([s["name"], "-", "-", "-", "missing (no node has started yet?)"])
            continue
        peers = ", ".join(
            f"{p['name']}{'' if p['current'] else ' (behind ' + str(p['lag']) + ')'}"
            for p in s["peers"]
        )
        rows.append([s["name"], s["replicas"], s["messages"], s["leader"] or "-", peers or "-"])
    lines += ["", render.table(["STREAM", "REPLICAS", "MESSAGES", "LEADER", "FOLLOWERS"], rows)]
    if nts.get("consumers"):
        crows = [[c["name"], c["pending"], c["delivered_seq"]] for c in nts["consumers"]]
        lines += ["", render.table(["EVENT CONSUMER", "PENDING", "READ UP TO"], crows)]
    return "\n".join(lines + _cluster_lines(r))


def _cluster_lines(r: dict[str, Any]) -> list[str]:
    """Nodes, queues and lags, as the running node sees the cluster."""
    c = r.get("cluster")
    if not c:
        return ["", "(no node runs on this data dir: nodes, queues and lags not shown)"]
    lines = [
        "",
        f"{'nodes':<10} {len(c['nodes'])} live: "
        + ", ".join(n + (" (this one)" if n == c["node"] else "") for n in c["nodes"]),
        f"{'queued':<10} {c['deliveries']} deliveries in the cluster",
    ]
    if c["queues"]:
        rows = [
            [q["domain"], q["tenant"], q["depth"], q["leased"], render.duration(q["oldest_age"]),
             f"in {q['next_due_in']:.0f}s" if q["next_due_in"] > 0.5 else "now", q["owner"]]
            for q in c["queues"]
        ]  # fmt: skip
        headers = ["DESTINATION", "TENANT", "DEPTH", "LEASED", "OLDEST", "NEXT", "OWNER"]
        lines += ["", render.table(headers, rows)]
    lags = r.get("lags") or {}
    if lags:
        rows = [[name, int(v.get("events", 0)), f"{v.get('seconds', 0.0):.1f}s"]
                for name, v in sorted(lags.items())]  # fmt: skip
        lines += ["", render.table(["CONSUMER", "LAG EVENTS", "LAG"], rows)]
    return lines


def run(args: argparse.Namespace, ctx: Context | None = None) -> int:
    ctx = ctx or context(args)
    report = build(ctx)
    if getattr(args, "json", False):
        render.print_json(report)
    else:
        print(text(report))
    return 1 if "error" in report["nats"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="postline status", description=__doc__)
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"postline: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.clustered:
        print("postline: not in cluster mode (no [cluster] in the config)", file=sys.stderr)
        return 2
    try:
        return run(args)
    except OpsError as exc:
        print(f"postline: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
