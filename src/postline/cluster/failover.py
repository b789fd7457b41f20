"""postline failover --from DC: run in a surviving datacenter after datacenter DC was
lost whole. Delivers what DC had acknowledged and not yet delivered, and brings DC's
events into this datacenter's event log (so into the activity and statistics stores).

It works from the copy of DC's streams that this datacenter's nodes keep while both
datacenters are up (cluster/multidc.py: NATS leafnodes between the datacenters, each its
own JetStream domain named like its ``[cluster] datacenter``; every accept in DC is
acknowledged only once this copy holds it). Mail DC had leased to its SMTP clients when it
died is delivered again: those recipients may get it twice, nobody gets nothing.

Refused while DC's JetStream still answers over the leafnode (both datacenters would then
deliver the same mail), unless --force (DC cut off, not gone: mail it delivers until it
hears of the failover may be sent twice; mail it accepts until then reaches the copy
when the link heals: run failover --force again then to deliver it). Running failover
twice adopts only what the copy received since the first run.

When DC comes back with its old store, or its nodes ran on through a split, they see
this failover as soon as they reach this datacenter and stand still: 503 to every
accept, nothing delivered (its mail is delivered here). To bring DC back: stop its
nodes, empty its NATS JetStream store, and here delete the copies of DC (streams
PL_DC_SPOOL, PL_DC_MSGS, PL_DC_EVENTS, OBJ_PL_DC_BODIES) and the keys failover.DC and
imported.DC of the KV bucket PL_<this datacenter>_STATE; then start DC's nodes (the
nodes of both datacenters make the copies again).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from postline import config as config_mod

EX_REFUSED = 3  # exit status: the lost datacenter still answers (see --force)
PROBE = 2.0  # seconds to wait for the lost datacenter's JetStream to answer


def register(sub: Any) -> None:
    p = sub.add_parser(
        "failover",
        help="in a surviving datacenter: deliver what a lost datacenter acknowledged",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from", dest="lost", metavar="DC", required=True,
        help="the lost datacenter (its [cluster] datacenter name = its JetStream domain)",
    )  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="this (surviving) datacenter's config")
    p.add_argument(
        "--force", action="store_true",
        help="fail over even though DC's JetStream still answers (duplicates if DC delivers)",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"postline failover: config error: {exc}", file=sys.stderr)
        return 2
    if not cfg.clustered or cfg.cluster is None:
        print("postline failover: needs cluster mode ([cluster] in the config)", file=sys.stderr)
        return 2
    if args.lost == cfg.cluster.datacenter:
        print(f"postline failover: {args.lost} is this datacenter", file=sys.stderr)
        return 2
    return asyncio.run(_failover(cfg, args.lost, args.force))


async def _failover(cfg: config_mod.Config, lost: str, force: bool) -> int:
    from nats.js.errors import NotFoundError

    from postline.backends.jetstream.connect import connect_briefly
    from postline.cluster.adopt import adopt
    from postline.cluster.multidc import prefix

    assert cfg.cluster is not None
    cluster = cfg.cluster

    try:
        nc = await connect_briefly(cluster.nats, dont_randomize=True)
    except Exception as exc:
        print(
            f"postline failover: cannot reach this datacenter's NATS at"
            f" {', '.join(cluster.nats)}: {exc}",
            file=sys.stderr,
        )
        return 1
    try:
        js = nc.jetstream(timeout=5.0)
        if await _answers(nc, lost) and not force:
            print(
                f"postline failover: datacenter {lost} still answers over the leafnode:"
                " refusing (both would deliver); --force if it is fenced off for good",
                file=sys.stderr,
            )
            return EX_REFUSED
        spool = f"{prefix(lost)}_SPOOL"
        try:
            info = await js.stream_info(spool)
        except NotFoundError:
            print(f"postline failover: no copy of {lost} here (no stream {spool})", file=sys.stderr)
            return 1
        if info.mirror is not None:
            print(f"copy of {lost}: last contact {_ago(info.mirror.active)} before this run")
        max_age = float(cfg.delivery.max_age) + 86400.0
        done = await adopt(js, cluster.datacenter, lost, cluster.stream_replicas, max_age)
    finally:
        await nc.close()
    print(
        f"failover from {lost} into {cluster.datacenter}: {done.deliveries} deliveries"
        f" ({done.in_flight} were in flight: may arrive twice) of {done.messages} messages,"
        f" {done.bodies} bodies; {done.events} events; {done.missing} missing in the copy"
    )
    return 0 if done.missing == 0 else 1


async def _answers(nc: Any, lost: str) -> bool:
    try:
        await nc.request(f"$JS.{lost}.API.INFO", b"", timeout=PROBE)
    except Exception:
        return False
    return True


def _ago(active: Any) -> str:
    """The mirror's ``active`` (nanoseconds since it last heard from its origin)."""
    if active is None or active < 0:
        return "unknown"
    return f"{active / 1e9:.1f} s"
