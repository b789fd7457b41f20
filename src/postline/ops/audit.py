"""``postline audit``: prove that nothing accepted was lost.

In cluster mode cluster/audit.py reads JetStream and PostgreSQL instead. Embedded, it
reads the spool beside a running node, in one read snapshot (the event log and the pending
deliveries as of the same instant), and applies events/audit.py's rule: every accepted
recipient is terminal (delivered, bounced, expired, dropped) or still queued, and every
event an enabled webhook was due reached it or its dead-letter store. Prints the counts
and each message that breaks the rule; exits 1 when one does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postline.backends.sqlite import audit as scan
from postline.events.audit import Auditor, Report, WebhookState
from postline.ops.context import OpsError, add_config, add_json, context
from postline.webhooks.audit_view import audit_state

EPILOG = """examples:
  postline audit                      # everything the event log still holds
  postline audit --since 24h          # recipients accepted in the last 24 hours
  postline audit --since 2026-11-27T00:00:00Z --json

Exit status: 0 when every accepted recipient is accounted for, 1 when one is not (each
such message is listed), 2 on a usage or config error. The event log keeps events for
events.retention after every consumer has read them; older recipients cannot be audited.
"""

MAX_LISTED = 50  # breaches printed in text mode (all of them with --json)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "audit",
        help="prove every accepted recipient is delivered, bounced, dropped or still queued",
        description="Check the event log against the queue: each recipient accepted is "
        "terminal or still queued, and each event an enabled webhook was due reached it or "
        "its dead-letter store. Reads beside a running node: spool.db, or in cluster mode "
        "this datacenter's JetStream streams and the webhooks' ledgers in PostgreSQL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--since",
        metavar="T",
        help="only recipients accepted at or after T: a duration ago (24h, 30m, 7d), "
        "an ISO 8601 time, or unix seconds",
    )
    add_config(p)
    add_json(p)
    p.set_defaults(run=run)


def parse_since(text: str | None, now: float) -> float | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h|d)", text.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OpsError(
            f"--since {text!r}: use a duration (24h), an ISO time (2026-11-27T00:00:00Z) "
            "or unix seconds",
            code=2,
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def audit(conn: Any, since: float | None, data_dir: Path) -> Report:
    """The spool's snapshot begins with the webhooks' committed offsets; their ledgers are
    read after that, so they hold at least what those offsets cover (a dispatcher records
    a batch before its offset is committed)."""
    with scan.snapshot(conn):
        committed = scan.offsets(conn)
        hooks = load_webhooks(data_dir, committed)
        auditor = Auditor(hooks)
        oldest = scan.oldest_event(conn)
        auditor.feed(scan.events(conn, since))
        queued = scan.queued(conn)
    return auditor.report(queued, since, oldest)


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    since = parse_since(args.since, time.time())
    if ctx.cfg.clustered:  # the log and the queue live in JetStream, not spool.db
        from postline.cluster import audit as cluster_audit

        rep = asyncio.run(cluster_audit.audit(ctx.cfg, since))
    else:
        conn = ctx.read()
        try:
            rep = audit(conn, since, ctx.data_dir)
        finally:
            conn.close()
    if args.json:
        print(json.dumps(as_json(rep), indent=2))
    else:
        print(render(rep))
    return 0 if rep.ok else 1


def load_webhooks(data_dir: Path, committed: dict[str, int]) -> list[WebhookState]:
    """The enabled webhooks, their dispatchers' offsets and what their ledgers recorded
    (none when no webhook was ever made)."""
    return [
        WebhookState(
            id=h.id,
            tenant=h.tenant,
            types=h.events,
            start=h.start_offset,
            committed=committed.get(f"webhook:{h.id}", h.start_offset),
            ranges=[*h.delivered, *h.dead],
            dead_letters=len(h.dead_event_ids),
        )
        for h in audit_state(data_dir)
        if h.enabled
    ]


def as_json(rep: Report) -> dict[str, Any]:
    return {
        "ok": rep.ok,
        "since": rep.since,
        "oldest_event": rep.oldest_event,
        "messages": rep.messages,
        "recipients": rep.recipients,
        "terminal": rep.terminal,
        "queued": rep.queued,
        "breaches": [b.__dict__ for b in rep.breaches],
        "webhooks": [
            {
                "id": w.id,
                "reached": w.reached,
                "pending": w.pending,
                "missing": w.missing,
                "dead_letters": w.dead_letters,
            }
            for w in rep.webhooks
        ],
    }


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(rep: Report) -> str:
    t = rep.terminal
    lines = [
        f"window      since {_when(rep.since) if rep.since else 'the oldest event kept'}"
        f" (log holds events since {_when(rep.oldest_event)})",
        f"messages    {rep.messages}   recipients {rep.recipients}",
        f"terminal    delivered {t.get('delivered', 0)}, bounced {t.get('bounce', 0)}, "
        f"dropped {t.get('dropped', 0)}",
        f"queued      {rep.queued}",
    ]
    for w in rep.webhooks:
        state = "ok" if not w.missing else f"{len(w.missing)} MISSING"
        lines.append(
            f"webhook     {w.id}: {w.reached} reached (posted or dead-lettered; "
            f"{w.dead_letters} in dead letters now), "
            f"{w.pending} pending, {state}"
        )
    if rep.breaches:
        lines.append(f"BROKEN      {len(rep.breaches)} recipient(s) accepted and unaccounted for:")
        for b in rep.breaches[:MAX_LISTED]:
            lines.append(f"  {b.sg_message_id} {b.email}: last event {b.last_event}, {b.detail}")
        if len(rep.breaches) > MAX_LISTED:
            lines.append(f"  ... and {len(rep.breaches) - MAX_LISTED} more (--json lists all)")
    lines.append("result      " + ("OK" if rep.ok else "FAILED"))
    return "\n".join(lines)
