"""``postline inbound``: one message on stdin, from a local MTA's pipe transport.

Postfix, for a bounce domain ``bounces.example.com`` (master.cf, then a transport map
entry ``bounces.example.com postline:``)::

    postline unix - n n - - pipe
      flags=Rq user=postline argv=/usr/bin/postline inbound --config /etc/postline.toml
      --recipient ${recipient}

Exit codes are sysexits.h values, which pipe(8) understands: 0 recorded or ignored,
67 (EX_NOUSER) a missing or forged token, 75 (EX_TEMPFAIL) the spool cannot be written
now (the MTA keeps the message and retries), 78 (EX_CONFIG) a bad config file.

In cluster mode (a ``[cluster]`` section) any node's machine may run it: it verifies with
the cluster's key and records into the cluster (PostgreSQL lists, the JetStream event
log), so NATS or PostgreSQL out of reach is a 75 too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from postline import config as config_mod
from postline.backends.sqlite.keys import SqliteKeyStore
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import Config
from postline.deliver.verp import ReturnPath, load_key
from postline.inbound import ingest
from postline.inbound.ingest import EX_CONFIG, EX_TEMPFAIL, Decision

MAX_MESSAGE = 64 * 1024 * 1024  # bytes read from stdin; a DSN may return the whole message


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inbound",
        help="record a bounce (RFC 3464 DSN) or spam complaint (ARF) read on stdin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="the node's TOML config file")
    p.add_argument(
        "--recipient", metavar="ADDR", help="the envelope recipient (Postfix: ${recipient})"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        return _say(Decision(EX_CONFIG, f"config error: {exc}"))
    raw = sys.stdin.buffer.read(MAX_MESSAGE)
    envelope = [args.recipient] if args.recipient else []
    if cfg.clustered:  # the cluster's key, tenants, lists and event log (cluster/inbound.py)
        from postline.cluster.inbound import decide_and_record

        try:
            return _say(asyncio.run(decide_and_record(cfg, raw, envelope)))
        except Exception as exc:  # NATS or PostgreSQL away: the MTA retries later
            return _say(Decision(EX_TEMPFAIL, f"cannot record now ({exc}); retry later"))
    if not (Path(cfg.data_dir) / "spool.db").is_file():
        line = f"no spool at {Path(cfg.data_dir).resolve()}: is --config the node's config?"
        return _say(Decision(EX_TEMPFAIL, line))
    try:
        decision = _decide(cfg, raw, envelope)
        if decision.events or decision.suppressions:
            asyncio.run(_record(cfg, decision))
    except Exception as exc:  # the spool, keys.db or the key file: the MTA retries later
        return _say(Decision(EX_TEMPFAIL, f"cannot record now ({exc}); retry later"))
    return _say(decision)


def _decide(cfg: Config, raw: bytes, envelope: list[str]) -> Decision:
    return_path = ReturnPath(load_key(cfg.bounces.secret, cfg.data_dir), cfg.bounces.domain)
    verify = return_path.verify_for(_tenants(cfg.data_dir), [cfg.http.node_name])
    return ingest.decide(raw, envelope, verify, time.time())


def _tenants(data_dir: str) -> list[str]:
    """Every tenant that ever had a key (revoked ones too: their mail still bounces)."""
    store = SqliteKeyStore(data_dir)
    try:
        return sorted({k.tenant for k in store.list()} | {"default"})
    finally:
        store.close()


async def _record(cfg: Config, decision: Decision) -> None:
    spool = await open_sqlite_spool(cfg.data_dir, cfg.spool, recover=False)
    try:
        await spool.record(decision.events, decision.suppressions)
    finally:
        await spool.close()


def _say(decision: Decision) -> int:
    print(
        f"postline inbound: {decision.line}", file=sys.stdout if decision.code == 0 else sys.stderr
    )
    return decision.code
