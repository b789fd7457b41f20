"""The ``postline`` command: ``serve``, ``keys create|list|revoke``, ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence

from postline import __version__, ops
from postline import config as config_mod
from postline.cluster import failover
from postline.inbound import command as inbound
from postline.keys import KeyError_, expand_scopes

_EPILOG = """examples:
  postline serve                                  # embedded default, ./postline-data
  postline serve --config postline.toml
  postline keys create --name ci --scopes mail.send
  postline keys list
  postline keys revoke <key id>
  postline bench accept --seconds 10
  postline bench smtp --messages 20000            # the SMTP relay beside Postfix
  postline bench activity --events 1000000        # activity store ingest, freshness, queries
  postline bench webhooks --events 200000         # signed webhook delivery, events/s
  postline status                                 # node, queue per destination, rates
  postline messages show <X-Message-Id>           # what happened to a message
  postline queue flush                            # retry deferred mail now
  postline suppressions list
"""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: built-in defaults)")


# ``postline bench NAME`` runs bench/<module>.py's main(args).
_BENCHES = {
    "accept": "accept",
    "e2e": "e2e",
    "backlog": "backlog",
    "attacks": "attacks",
    "smtp": "smtp_relay",  # smtp-source -> relay -> smtp-sink, Postline beside Postfix
    "smtp-protocol": "aiosmtpd_compare",  # the sans-I/O SMTP server against aiosmtpd
    "stats": "stats",  # stats rollup ingest beside one-row-per-event SQLite; query p50/p99
    "activity": "activity",  # activity store: ingest via the consumer, freshness, query p99 at 10M
    "webhooks": "webhooks",  # events/s delivered to one signed webhook on loopback
    "postgres-keys": "postgres_keys",  # API key lookups/s: PostgreSQL mirror vs SQLite
    "jetstream": "jetstream_spool",  # accept rate: JetStream spool 1n R1 / 3n R3 beside SQLite
    "cluster": "cluster",  # e2e msg/s and CPU per process: 1 vs 2 cluster nodes, embedded beside
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postline",
        description="Postline: a self-hosted, SendGrid-compatible email delivery platform.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"postline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run a node in the foreground (HTTP API, delivery); stops on SIGTERM/SIGINT",
    )
    _add_config(serve)
    keys = sub.add_parser("keys", help="manage API keys (shown once, stored hashed)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ksub.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--name", required=True, help="a label for the key")
    create.add_argument("--tenant", default="default", help="tenant the key belongs to")
    create.add_argument(
        "--scopes",
        help="comma-separated SendGrid scopes (e.g. mail.send,suppression.*); default: full access",
    )
    _add_config(create)
    lst = ksub.add_parser("list", help="list keys (never the key itself)")
    lst.add_argument("--tenant", help="only this tenant's keys")
    _add_config(lst)
    revoke = ksub.add_parser("revoke", help="revoke a key by its id (the middle part of SG.x.y)")
    revoke.add_argument("key_id")
    _add_config(revoke)
    _add_sink_wait(sub)
    bench = sub.add_parser("bench", help="benchmarks (print figures; see bench/)")
    bench.add_argument("what", choices=list(_BENCHES), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options for the benchmark")
    ops.register(sub)  # status, messages, queue, suppressions
    inbound.register(sub)  # postline inbound: DSNs and ARF reports on stdin
    failover.register(sub)  # postline failover --from DC (cluster/failover.py)
    return parser


def _add_sink_wait(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sink = sub.add_parser(
        "sink",
        help="a local SMTP destination that prints each message it receives (for trying things)",
        description="A local SMTP destination that prints each message it receives. Route mail "
        'to it with [delivery] routes = { "*" = "127.0.0.1:2526" }. The recipient\'s local '
        "part steers the reply: 450-bob@x is deferred, 550-bob@x bounced, others accepted.",
    )
    sink.add_argument("--listen", default="127.0.0.1:2526", help="host:port (default %(default)s)")
    sink.add_argument(
        "--show",
        choices=["summary", "full", "none"],
        default="summary",
        help="a line per message (default), the whole message too, or nothing",
    )
    wait = sub.add_parser(
        "wait",
        help="wait until the node on this data_dir accepts mail (GET /healthz is 200)",
    )
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)s)")
    _add_config(wait)


def cmd_sink(args: argparse.Namespace) -> int:
    import uvloop

    from postline.sink import run_sink

    host, _, port_text = args.listen.rpartition(":")
    if not host or not port_text.isdigit():
        print(f"postline sink: --listen wants host:port, got {args.listen!r}", file=sys.stderr)
        return 2
    host, port = host.strip("[]"), int(port_text)
    try:
        uvloop.run(run_sink(host, port, args.show))
    except OSError as exc:
        print(f"postline sink: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from postline.wait import wait_healthy

    ok, what = wait_healthy(_load_config(args.config), args.timeout)
    print(f"postline wait: {what}" if ok else f"postline wait: timed out: {what}", file=sys.stderr)
    return 0 if ok else 1


def _say_where(cfg: config_mod.Config) -> None:
    """Keys live in data_dir: say which one when no node has used it (a likely mix-up)."""
    from pathlib import Path

    where = Path(cfg.data_dir).resolve()
    if not (where / "spool.db").exists():
        print(
            f"postline: note: using data_dir {where}, where no node has run yet; start "
            "`postline serve` with the same config (and working directory) to use this key",
            file=sys.stderr,
        )


def _load_config(path: str | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"postline: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from postline import log, runtime

    cfg = _load_config(args.config)
    log.setup(cfg.log.level)

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await runtime.serve(cfg, stop)

    import uvloop

    from postline.datadir import DataDirBusy
    from postline.listen import ListenFailed

    try:
        clean = uvloop.run(main())
    except (DataDirBusy, ListenFailed) as exc:
        print(f"postline: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postline: cannot start: {exc}", file=sys.stderr)
        return 1
    except config_mod.ConfigError as exc:
        print(f"postline: config error: {exc}", file=sys.stderr)
        return 2
    return 0 if clean else 1


def cmd_keys(args: argparse.Namespace) -> int:
    from postline.cluster.backends import ClusterStartError, close_keys, open_keys_sync

    cfg = _load_config(args.config)
    if not cfg.clustered:  # in cluster mode keys live in PostgreSQL, shared by every node
        _say_where(cfg)
    try:
        store = open_keys_sync(cfg)
    except ClusterStartError as exc:
        print(f"postline: {exc}", file=sys.stderr)
        return 1
    try:
        if args.keys_command == "create":
            try:
                scopes = expand_scopes(args.scopes)
            except KeyError_ as exc:
                print(f"postline: {exc}", file=sys.stderr)
                return 2
            key, info = store.create(args.name, args.tenant, scopes)
            print(
                f"created key {info.key_id} name={info.name} tenant={info.tenant} "
                f"scopes={len(scopes)}; store it now, it is not shown again:"
            )
            print(key)
        elif args.keys_command == "list":
            for k in store.list(args.tenant):
                state = "revoked" if k.revoked else "active"
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.created))
                print(
                    f"{k.key_id}\t{k.name}\t{k.tenant}\t{state}\t{when}\t{','.join(sorted(k.scopes))}"
                )
        else:
            if not store.revoke(args.key_id):
                print(f"postline: no active key with id {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    finally:
        close_keys(store)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib
    from pathlib import Path

    # Benchmarks are code in the repository's bench/ folder (run from a clone).
    root = Path(__file__).resolve().parents[2]
    if (root / "bench").is_dir():
        sys.path.insert(0, str(root))
    name = f"bench.{_BENCHES[args.what]}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", name):
            raise
        print(
            "postline bench: the benchmarks live in the bench/ folder of a Postline clone; "
            f"run them from one (looked in {root})",
            file=sys.stderr,
        )
        return 2
    try:
        result: int = module.main(args.args)
    except FileNotFoundError as exc:  # a peer tool (smtp-sink, postfix) is missing
        print(f"postline bench: {exc}", file=sys.stderr)
        return 2
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(ops.normalize_argv(argv))
    if args.command in ops.COMMANDS:
        return ops.run(args)
    if args.command in ("inbound", "failover"):
        return int(args.run(args))
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "keys":
        return cmd_keys(args)
    if args.command == "sink":
        return cmd_sink(args)
    if args.command == "wait":
        return cmd_wait(args)
    return cmd_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
