"""The audit's rule (events/audit.py) on hand-made logs."""

from __future__ import annotations

from postline.events.audit import Auditor, WebhookState


def rows(*items: tuple[int, str, str, str]) -> list[tuple[int, float, str, str, str, str]]:
    return [(off, 0.0, "t1", event, email, msg) for off, event, email, msg in items]


def test_terminal_queued_and_lost() -> None:
    a = Auditor()
    a.feed(
        rows(
            (1, "processed", "A@x.example", "m1"),
            (2, "processed", "b@x.example", "m1"),
            (3, "processed", "c@x.example", "m2"),
            (4, "dropped", "d@x.example", "m2"),  # dropped at accept: terminal
            (5, "deferred", "a@x.example", "m1"),
            (6, "delivered", "a@x.example", "m1"),
            (7, "bounce", "a@x.example", "m1"),  # an asynchronous bounce after delivery
            (8, "deferred", "b@x.example", "m1"),
            (9, "delivered", "z@x.example", "m0"),  # accepted before the window: ignored
        )
    )
    rep = a.report({("m1", "b@x.example")}, None, None)
    assert (rep.messages, rep.recipients) == (2, 4)
    assert rep.terminal == {"bounce": 1, "dropped": 1}
    assert rep.queued == 1
    assert [(b.sg_message_id, b.email, b.last_event) for b in rep.breaches] == [
        ("m2", "c@x.example", "processed")
    ]
    assert not rep.ok


def test_a_later_deferral_does_not_undo_a_terminal_event() -> None:
    a = Auditor()
    a.feed(
        rows(
            (1, "processed", "a@x", "m"), (2, "delivered", "a@x", "m"), (3, "deferred", "a@x", "m")
        )
    )
    assert a.report(set(), None, None).ok


def test_webhook_events_reached_pending_and_missing() -> None:
    hook = WebhookState(
        id="w1",
        tenant="t1",
        types=frozenset({"delivered"}),
        start=1,
        committed=8,
        ranges=[(2, 4), (5, 6)],
    )
    a = Auditor([hook])
    a.feed(
        rows(
            (1, "processed", "a@x", "m"),  # before the webhook existed
            (2, "delivered", "a@x", "m"),
            (6, "delivered", "b@x", "n"),
            (7, "delivered", "c@x", "o"),  # committed past it, in no range: missing
            (8, "processed", "c@x", "o"),  # a type the webhook does not take
            (9, "delivered", "d@x", "p"),  # beyond the committed offset: pending
        )
    )
    (count,) = a.report(set(), None, None).webhooks
    assert (count.reached, count.pending, count.missing) == (2, 1, [7])
