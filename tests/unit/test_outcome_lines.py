"""The outcome log: one JSON line per outcome with relay, delay, status, dsn and reply."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from postline.deliver.outcome_log import OutcomeLog, Relays, dsn_of
from postline.deliver.record import Recorder
from postline.log import JsonFormatter, RawLines
from postline.model.outcomes import Bounced, Deferred, Delivered, Expired
from postline.schedule.ready import MessageMeta
from postline.spool.interface import Lease

NOW = 1_000_000.0
META = MessageMeta("xid.pl1.0", "<xid.0@h>", None, None)


def lease(rcpt: str = "bob@example.com", attempts: int = 0, age: float = 2.5) -> Lease:
    domain = rcpt.rpartition("@")[2]
    return Lease(1, 1, "t1", rcpt, domain, attempts, NOW - age, NOW + 3600, "xid.pl1.0")


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rec in caplog.records:
        if rec.name == "postline.outcome":
            assert isinstance(rec.msg, RawLines)
            out += [json.loads(x) for x in JsonFormatter().format(rec).splitlines()]
    return out


def recorder(level: str = "info", **kw: Any) -> Recorder:
    relays = Relays({"example.com": "mx.example.com:2525"}, 25)
    return Recorder(1.0, 10.0, lambda: NOW, outcomes=OutcomeLog(level, relays, lambda: NOW), **kw)


def test_a_line_per_outcome_with_every_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "postline.outcome")
    rec = recorder()
    rec.settle(lease(), META, Delivered("250 2.0.0 Ok: queued as X", ip="10.0.0.1"))
    rec.settle(lease("a@other.org", 1), META, Deferred("450 4.2.0 Greylisted", ip="10.0.0.2"))
    rec.settle(lease(), META, Bounced("550 5.1.1 no such user", "5.1.1", "bounce", "Invalid"))
    rec.settle(lease(), META, Expired("451 4.3.0 last error"))
    sent, deferred, bounced, expired = lines(caplog)
    assert sent == {
        "ts": NOW,
        "level": "info",
        "logger": "postline.outcome",
        "msg": "outcome",
        "tenant": "t1",
        "sg_message_id": "xid.pl1.0",
        "recipient": "bob@example.com",
        "relay": "mx.example.com[10.0.0.1]:2525",
        "delay": 2.5,
        "attempt": 1,
        "status": "sent",
        "dsn": "2.0.0",
        "reply": "250 2.0.0 Ok: queued as X",
    }
    assert deferred["status"] == "deferred" and deferred["relay"] == "10.0.0.2:25"
    assert deferred["attempt"] == 2 and deferred["dsn"] == "4.2.0"
    assert bounced["status"] == "bounced" and bounced["dsn"] == "5.1.1"
    assert bounced["relay"] == "none"  # no server answered: a route failure, say
    assert expired["status"] == "expired" and expired["dsn"] == "4.4.7"
    assert expired["reply"] == "451 4.3.0 last error"


def test_a_deferral_with_no_retry_left_is_logged_as_expired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "postline.outcome")
    old = Lease(1, 1, "t1", "bob@example.com", "example.com", 3, NOW - 100, NOW + 0.5, "x.pl1.0")
    recorder().settle(old, META, Deferred("450 4.2.0 later", ip="10.0.0.1"))
    (line,) = lines(caplog)
    assert line["status"] == "expired" and line["reply"] == "450 4.2.0 later"
    assert line["relay"] == "mx.example.com[10.0.0.1]:2525"


@pytest.mark.parametrize(("level", "logged"), [("off", 0), ("debug", 0), ("info", 1)])
def test_the_level_is_configurable(
    caplog: pytest.LogCaptureFixture, level: str, logged: int
) -> None:
    caplog.set_level(logging.INFO, "postline.outcome")
    recorder(level).settle(lease(), META, Delivered("250 ok", ip="10.0.0.1"))
    assert len(lines(caplog)) == logged


def test_relays_follow_the_routing_config() -> None:
    relays = Relays({"a.test": "[::1]:2526", "*": "relay.example:587"}, 2525)
    assert relays.relay("a.test", "::1") == "[::1]:2526"
    assert relays.relay("b.test", "192.0.2.7") == "relay.example[192.0.2.7]:587"
    assert relays.relay("b.test", "") == "none"
    mx = Relays({}, 2525)
    assert mx.relay("b.test", "192.0.2.7") == "192.0.2.7:2525"  # MX hosts: delivery.mx_port
    assert mx.relay("[192.0.2.7]", "192.0.2.7") == "192.0.2.7:25"  # address literal


@pytest.mark.parametrize(
    ("reply", "dsn"),
    [
        ("250 2.0.0 Ok", "2.0.0"),
        ("550 5.1.1 <x>: unknown", "5.1.1"),
        ("421 4.7.0 busy", "4.7.0"),
        ("250 Ok", ""),
        ("expired before delivery", ""),
        ("", ""),
    ],
)
def test_dsn_of_a_reply(reply: str, dsn: str) -> None:
    assert dsn_of(reply) == dsn


def test_lines_written_in_one_record_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    caplog.set_level(logging.INFO, "postline.outcome")
    log = OutcomeLog("info", None, lambda: NOW)

    async def burst() -> None:
        for i in range(5):
            log.line(
                tenant="t",
                sg_message_id=f"x.pl1.{i}",
                recipient="a@b.c",
                relay="none",
                created_at=NOW,
                attempt=1,
                status="sent",
                reply="250 ok",
            )
        await asyncio.sleep(0.3)  # FLUSH_EVERY

    asyncio.run(burst())
    records = [r for r in caplog.records if r.name == "postline.outcome"]
    assert len(records) == 1 and len(lines(caplog)) == 5
