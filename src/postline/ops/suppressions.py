"""``postline suppressions list|remove``: the addresses the accept stage drops."""

from __future__ import annotations

import argparse
from typing import Any

from postline.backends.sqlite import admin, inspect
from postline.ops import render
from postline.ops.context import OpsError, add_config, add_json, context

LISTS = ("bounces", "blocks", "spam_reports", "unsubscribes", "invalid_emails")

EPILOG = """examples:
  postline suppressions list
  postline suppressions list --tenant acme --json
  postline suppressions remove bob@example.com                 # tenant "default", every list
  postline suppressions remove bob@example.com --list bounces --tenant acme

An address lands on "bounces" after a hard bounce (5.1.x...) and on "blocks" after a
block; while on bounces, spam_reports, unsubscribes or invalid_emails, mail to it is
dropped at accept (a "dropped" event). Remove it once the address works again.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "suppressions",
        help="list or remove suppressed addresses (bounces, blocks, ...)",
        description="The suppression lists, per tenant.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = p.add_subparsers(dest="suppressions_command", required=True, metavar="ACTION")
    lst = ssub.add_parser("list", help="suppressed addresses, newest first")
    lst.add_argument("--tenant", help="only this tenant's (default: every tenant)")
    lst.add_argument("--email", help="only this address")
    add_config(lst)
    add_json(lst)
    lst.set_defaults(run=run_list)
    rm = ssub.add_parser("remove", help="take an address off the suppression lists")
    rm.add_argument("email")
    rm.add_argument("--tenant", default="default", help="the tenant (default: %(default)s)")
    rm.add_argument("--list", choices=LISTS, help="only this list (default: every list)")
    add_config(rm)
    add_json(rm)
    rm.set_defaults(run=run_remove)


def run_list(args: argparse.Namespace) -> int:
    conn = context(args).read()
    try:
        rows = inspect.suppressions(conn, args.tenant, args.email)
    finally:
        conn.close()
    if args.json:
        render.print_json([_json(s) for s in rows])
    elif not rows:
        print("no suppressed addresses" + (f" for tenant {args.tenant}" if args.tenant else ""))
    else:
        headers = ["EMAIL", "LIST", "TENANT", "SINCE", "STATUS", "REASON"]
        table = [
            [s.email, s.list, s.tenant, render.when(s.created), s.status or "-", s.reason]
            for s in rows
        ]
        print(render.table(headers, table))
    return 0


def _json(s: inspect.Suppression) -> dict[str, Any]:
    return {
        "email": s.email,
        "list": s.list,
        "tenant": s.tenant,
        "created": s.created,
        "status": s.status,
        "reason": s.reason,
    }


def run_remove(args: argparse.Namespace) -> int:
    ctx = context(args)
    # A plain row delete: the node reads the lists from the spool at every accept (no
    # cache), so this works the same whether a node runs or not.
    conn = ctx.write()
    try:
        lists = admin.remove_suppression(conn, args.email, args.tenant, args.list)
    finally:
        conn.close()
    if args.json:
        render.print_json({"email": args.email.lower(), "tenant": args.tenant, "removed": lists})
        return 0 if lists else 1
    if not lists:
        raise OpsError(
            f"{args.email} is not on "
            f"{'the ' + args.list + ' list' if args.list else 'any suppression list'} of "
            f"tenant {args.tenant!r} (see `postline suppressions list --email {args.email}`)"
        )
    print(f"removed {args.email.lower()} from {', '.join(lists)} (tenant {args.tenant})")
    return 0
