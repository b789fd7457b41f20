"""``postline queue [list|flush|purge]``: the pending mail by destination, and acting on it.

Flush and purge go through the running node (its control socket) so that its in-memory
queues and windows follow; when no node runs they act on the spool directly.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from postline.backends.sqlite import admin, inspect
from postline.ops import render
from postline.ops.context import Context, OpsError, add_config, add_json, ask_node, context
from postline.ops.status import destination_json

EPILOG = """examples:
  postline queue                                 # pending mail per destination domain
  postline queue list --domain example.com       # its deliveries, oldest first (like mailq)
  postline queue flush                           # retry every deferred delivery now
  postline queue flush --domain example.com
  postline queue purge --domain example.com      # asks you to type the domain to confirm
  postline queue purge --message <X-Message-Id or sg_message_id> --yes

Flush makes deferred deliveries due now (mail scheduled with send_at keeps its time).
Purge removes pending deliveries for good; each gets a "dropped" event with the reason
"Purged by operator". Deliveries being sent at that moment finish their attempt.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "queue",
        help="pending mail by destination; flush (retry now) or purge it",
        description="List the pending mail by destination domain, retry deferred mail now "
        "(flush), or remove it (purge). Without an action: list.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _list_options(p, True)
    p.set_defaults(run=run_list, domain=None, limit=100, json=False, config=None)
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION")
    lst = qsub.add_parser("list", help="pending mail per domain, or one domain's deliveries")
    _list_options(lst, False)
    lst.set_defaults(run=run_list)
    flush = qsub.add_parser("flush", help="make deferred mail due now (the node retries at once)")
    flush.add_argument("--domain", help="only mail to this recipient domain")
    add_config(flush)
    add_json(flush)
    flush.set_defaults(run=run_flush)
    purge = qsub.add_parser(
        "purge", help="remove pending mail of a domain or a message (records dropped events)"
    )
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--domain", help="every pending delivery to this recipient domain")
    which.add_argument("--message", metavar="ID", help="an X-Message-Id or a sg_message_id")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_config(purge)
    add_json(purge)
    purge.set_defaults(run=run_purge)


def _list_options(p: argparse.ArgumentParser, on_parent: bool) -> None:
    # On `queue` itself the defaults are suppressed, so `queue list --domain x` is not
    # overwritten by the parent parser's defaults (an argparse subparser quirk).
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if on_parent else value

    p.add_argument("--domain", default=default(None), help="show this domain's deliveries")
    p.add_argument(
        "--limit", type=int, default=default(100), help="deliveries shown with --domain (100)"
    )
    p.add_argument(
        "--config", metavar="FILE", default=default(None), help="the node's TOML config file"
    )
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON")


def run_list(args: argparse.Namespace) -> int:
    ctx = context(args)
    now = time.time()
    conn = ctx.read()
    try:
        shape = inspect.queue_shape(conn, now, args.domain)
        pending = inspect.pending_in_domain(conn, args.domain, args.limit) if args.domain else []
    finally:
        conn.close()
    dests = [destination_json(q, now) for q in shape]
    rows = [_pending_json(d, now) for d in pending]
    if args.json:
        render.print_json({"destinations": dests, "deliveries": rows} if args.domain else dests)
    elif not dests:
        print("the queue is empty" + (f" for {args.domain}" if args.domain else ""))
    else:
        print(_list_text(dests, rows, now))
    return 0


def _pending_json(d: inspect.PendingDelivery, now: float) -> dict[str, Any]:
    return {
        "sg_message_id": d.sg_message_id,
        "tenant": d.tenant,
        "recipient": d.rcpt,
        "state": d.state(now),
        "attempts": d.attempts,
        "age": round(now - d.created_at, 3),
        "next_attempt": None if d.leased else d.due_at,
        "expires_at": d.expires_at,
    }


def _list_text(dests: list[dict[str, Any]], rows: list[dict[str, Any]], now: float) -> str:
    headers = ["DOMAIN", "TOTAL", "DUE", "DEFERRED", "SCHEDULED", "IN FLIGHT", "OLDEST", "RETRY"]
    table = [
        [d["domain"], d["total"], d["due"], d["deferred"], d["scheduled"], d["inflight"],
         render.duration(d["oldest_age"]), render.relative(d["next_retry"], now)]
        for d in dests
    ]  # fmt: skip
    out = render.table(headers, table)
    if rows:
        detail = [
            [r["recipient"], r["state"], r["attempts"], render.duration(r["age"]),
             render.relative(r["next_attempt"], now), r["sg_message_id"]]
            for r in rows
        ]  # fmt: skip
        headers = ["RECIPIENT", "STATE", "ATTEMPTS", "AGE", "NEXT", "SG_MESSAGE_ID"]
        out += "\n\n" + render.table(headers, detail)
    return out


def run_flush(args: argparse.Namespace) -> int:
    ctx = context(args)
    ctx.embedded_only()  # the node's flush works on spool.db
    reply = ask_node(ctx, "flush", domain=args.domain)
    if reply is not None:
        n, where = int(reply["flushed"]), "the node retries them now"
    else:
        conn = ctx.write()
        try:
            n = sum(admin.flush(conn, time.time(), args.domain).values())
        finally:
            conn.close()
        where = "no node runs: they go at its next start"
    if args.json:
        render.print_json({"flushed": n, "node": reply is not None})
    else:
        scope = f" to {args.domain}" if args.domain else ""
        print(f"{n} deferred deliveries{scope} made due now; {where}")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    ctx = context(args)
    ctx.embedded_only()  # the node's purge works on spool.db
    count = _count(ctx, args.domain, args.message)
    what = f"to {args.domain}" if args.domain else f"of message {args.message}"
    if count == 0:
        return _purge_result(args, 0, what, None)
    if not args.yes:
        _confirm(count, what, args.domain)
    reply = ask_node(ctx, "purge", domain=args.domain, message=args.message)
    if reply is not None:
        return _purge_result(args, int(reply["purged"]), what, True, int(reply["inflight"]))
    conn = ctx.write()
    try:
        done = admin.purge(conn, time.time(), domain=args.domain, message=args.message, leased=True)
    finally:
        conn.close()
    return _purge_result(args, len(done), what, False)


def _count(ctx: Context, domain: str | None, message: str | None) -> int:
    conn = ctx.read()
    try:
        if domain is not None:
            return sum(q.total for q in inspect.queue_shape(conn, time.time(), domain))
        assert message is not None
        return len(inspect.pending_of_message(conn, message))
    finally:
        conn.close()


def _confirm(count: int, what: str, domain: str | None) -> None:
    word = domain or "y"
    sys.stderr.write(
        f"Purge {count} pending deliveries {what}? They will not be delivered; each gets a "
        f"dropped event. Type {word!r} to confirm: "
    )
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if not sys.stdin.isatty():
        sys.stderr.write("\n")  # the answer came from a pipe: end the question's line
    if answer.lower() != word.lower():
        raise OpsError("not confirmed; nothing was purged (pass --yes to skip the question)")


def _purge_result(
    args: argparse.Namespace, n: int, what: str, node: bool | None, inflight: int = 0
) -> int:
    if args.json:
        render.print_json({"purged": n, "node": bool(node), "inflight": inflight})
    elif n == 0 and not inflight:
        print(f"nothing pending {what}; nothing purged")
    else:
        note = "" if node is not False else " (no node runs; purged in the spool)"
        print(f"purged {n} deliveries {what}, each recorded as a dropped event{note}")
        if inflight:
            print(f"{inflight} being sent right now finish their attempt (not purged)")
    return 0
