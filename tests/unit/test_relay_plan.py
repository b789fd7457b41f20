"""How one DATA with an X-SMTPAPI header becomes messages (accept/relay.py ``_plan``)."""

from __future__ import annotations

from postline.accept.relay import _plan
from postline.accept.smtpapi import parse_smtpapi
from postline.model.relay import RelayMessage

BASE = RelayMessage(mail_from="ana@sender.example", categories=["c"])
NOW = 1_800_000_000.0


def test_without_x_smtpapi_one_message_for_every_rcpt_to_deduplicated() -> None:
    plan = _plan(["a@x.example", "B@x.example", "A@x.example"], BASE, None)
    assert plan == [(BASE, ["a@x.example", "B@x.example"], None)]


def test_to_fans_out_with_its_own_values_and_rcpt_to_beside_it_gets_the_message() -> None:
    api = parse_smtpapi(
        '{"to": ["Bob <bob@x.example>", "carol@y.example", "BOB@x.example"],'
        ' "sub": {"-n-": ["Bob", "Carol", "Bob again"]},'
        f' "send_each_at": [{int(NOW) + 60}, {int(NOW) + 120}, {int(NOW) + 180}]}}',
        now=NOW,
    )
    plan = _plan(["carol@y.example", "dan@z.example"], BASE, api)
    assert [(rm.to_header, rm.sub, rcpts, at) for rm, rcpts, at in plan] == [
        ("Bob <bob@x.example>", {"-n-": "Bob"}, ["bob@x.example"], int(NOW) + 60),
        ("carol@y.example", {"-n-": "Carol"}, ["carol@y.example"], int(NOW) + 120),
        (None, None, ["dan@z.example"], None),  # the duplicate "to" is skipped
    ]  # fmt: skip
    assert all(rm.categories == ["c"] for rm, _, _ in plan)


def test_a_non_ascii_local_part_in_to_is_sent_with_smtputf8() -> None:
    api = parse_smtpapi('{"to": ["jos\\u00e9@x.example", "ana@x.example"]}', now=NOW)
    plan = _plan(["ana@x.example"], BASE, api)
    assert [rm.smtputf8 for rm, _, _ in plan] == [True, False]
