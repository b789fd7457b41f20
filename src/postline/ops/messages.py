"""``postline messages show <id>``: every recipient's state, its attempts, the events."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any

from postline.backends.sqlite import inspect
from postline.ops import render
from postline.ops.context import OpsError, add_config, add_json, context

EPILOG = """examples:
  postline messages show Vb3pG0yfT2mYb2kqQ2yW1A           # the X-Message-Id of a 202
  postline messages show Vb3pG0yfT2mYb2kqQ2yW1A.pl1.0     # one personalization's sg_message_id
  postline messages show Vb3pG0yfT2mYb2kqQ2yW1A --json | jq '.recipients[].state'

States: queued (waiting for its first attempt), scheduled (send_at in the future), due,
in flight, deferred (waiting for a retry), then for good: delivered, bounced, expired,
dropped. Pending recipients come from the spool, finished ones from the event log.
"""

OPTIONS = ("--json", "--config", "-h", "--help")  # the options of `messages show`

# Event -> the state it leaves a recipient in (a pending delivery row overrides it).
_STATE = {"processed": "queued", "deferred": "deferred", "delivered": "delivered"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "messages",
        help="what happened to a message: each recipient's state, attempts, events",
        description="Look up one request (its X-Message-Id) or one message (sg_message_id).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    msub = p.add_subparsers(dest="messages_command", required=True, metavar="ACTION")
    show = msub.add_parser(
        "show",
        help="each recipient's state, the attempts with their replies, the events in order",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument(
        "id", nargs="?", help="an X-Message-Id (every personalization) or a sg_message_id"
    )
    show.add_argument("--id", dest="id_option", help=argparse.SUPPRESS)  # ids starting with -
    add_config(show)
    add_json(show)
    show.set_defaults(run=run)


@dataclass(slots=True)
class Recipient:
    sg_message_id: str
    email: str
    state: str = "queued"
    attempts: int = 0
    next_retry: float | None = None
    expires_at: float | None = None
    last_reply: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    ident = (args.id_option or args.id or "").strip()
    if not ident:
        raise OpsError("give a message id: the X-Message-Id of a 202 reply, or a sg_message_id", 2)
    ctx = context(args)
    conn = ctx.read()
    try:
        view = inspect.message(conn, ident)
    finally:
        conn.close()
    if not view.events and not view.pending:
        raise OpsError(
            f"no message {ident!r} in the spool at {ctx.data_dir}: give the X-Message-Id "
            "header of the 202 reply or a sg_message_id from an event"
        )
    now = time.time()
    recipients = recipients_of(view, now)
    events = [json.loads(e.data) for e in view.events]
    if args.json:
        render.print_json(
            {"id": ident, "recipients": [_rcpt_json(r) for r in recipients], "events": events}
        )
    else:
        print(text(ident, recipients, events, now))
    return 0


def recipients_of(view: inspect.MessageView, now: float) -> list[Recipient]:
    found: dict[tuple[str, str], Recipient] = {}
    for e in view.events:
        r = _get(found, e.sg_message_id, e.email)
        data = json.loads(e.data)
        reply = str(data.get("response") or data.get("reason") or "")
        r.state = _event_state(e.event, data)
        if r.state in ("deferred", "delivered", "bounced"):
            r.attempts += 1  # an expiry is not an attempt of its own
        if reply:
            r.last_reply = reply
        r.history.append({"ts": e.ts, "event": e.event, "reply": reply})
    for d in view.pending:
        r = _get(found, d.sg_message_id, d.rcpt)
        r.state = d.state(now)
        if r.state == "due" and not d.attempts:
            r.state = "queued"
        r.attempts = d.attempts
        r.next_retry = None if d.leased else d.due_at
        r.expires_at = d.expires_at
    return list(found.values())


def _get(found: dict[tuple[str, str], Recipient], sg_id: str, email: str) -> Recipient:
    key = (sg_id, email.lower())
    r = found.get(key)
    if r is None:
        r = found[key] = Recipient(sg_id, email)
    return r


def _event_state(event: str, data: dict[str, Any]) -> str:
    if event == "bounce":
        return "expired" if data.get("status") == "4.4.7" else "bounced"
    if event == "dropped":
        return "dropped"
    return _STATE.get(event, event)


def _rcpt_json(r: Recipient) -> dict[str, Any]:
    return {
        "sg_message_id": r.sg_message_id,
        "email": r.email,
        "state": r.state,
        "attempts": r.attempts,
        "next_retry": r.next_retry,
        "expires_at": r.expires_at,
        "last_reply": r.last_reply,
        "history": r.history,
    }


def text(ident: str, recipients: list[Recipient], events: list[dict[str, Any]], now: float) -> str:
    messages = len({r.sg_message_id for r in recipients})
    lines = [f"{ident}: {messages} message(s), {len(recipients)} recipient(s)", ""]
    rows = [
        [r.email, r.state, r.attempts, _next(r, now), r.sg_message_id, r.last_reply or "-"]
        for r in recipients
    ]
    headers = ["RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "SG_MESSAGE_ID", "LAST REPLY"]
    lines += [render.table(headers, rows), "", "events:"]
    for e in events:
        reply = e.get("response") or e.get("reason") or ""
        lines.append(
            f"  {render.when(e.get('timestamp'))}  {e.get('event', '?'):<10} "
            f"{e.get('email', '')}  {reply}".rstrip()
        )
    return "\n".join(lines)


def _next(r: Recipient, now: float) -> str:
    if r.state in ("delivered", "bounced", "expired", "dropped"):
        return "-"
    if r.state == "in flight":
        return "sending"
    return render.relative(r.next_retry, now)
