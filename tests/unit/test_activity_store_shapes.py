"""Rows of the activity store in SendGrid's response shapes (activity/shapes.py)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from postline.activity import shapes

TS = datetime(2026, 1, 2, 3, 4, 5, 678000)


def data(**fields: object) -> str:
    return msgspec.json.encode(fields).decode()


def test_summary_names_status_as_the_openapi_does() -> None:
    row = ("a@x.com", "m1", "Hi", "b@y.com", "processing", 0, 2, TS)
    assert shapes.summary(row) == {
        "from_email": "a@x.com",
        "msg_id": "m1",
        "subject": "Hi",
        "to_email": "b@y.com",
        "status": "processed",
        "opens_count": 0,
        "clicks_count": 2,
        "last_event_time": "2026-01-02T03:04:05Z",
    }
    assert shapes.summary(("", "m", "", "b", "not_delivered", 0, 0, TS))["status"] == (
        "not_delivered"
    )


def test_event_entries() -> None:
    bounce = shapes.event_entry("bounce", TS, data(reason="550 5.1.1 gone", type="bounce"))
    assert bounce == {
        "event_name": "bounced",
        "processed": "2026-01-02T03:04:05Z",
        "reason": "550 5.1.1 gone",
        "bounce_type": "hard",
    }
    blocked = shapes.event_entry("bounce", TS, data(reason="554 spam", type="blocked"))
    assert blocked["bounce_type"] == "soft"
    deferred = shapes.event_entry("deferred", TS, data(response="450 later", attempt="3"))
    assert (deferred["reason"], deferred["attempt_num"]) == ("450 later", 3)
    click = shapes.event_entry("click", TS, data(url="https://x.test/", useragent="UA"))
    assert click["event_name"] == "clicked"
    assert (click["url"], click["http_user_agent"]) == ("https://x.test/", "UA")
    long_reason = shapes.event_entry("dropped", TS, data(reason="x" * 5000))
    assert len(long_reason["reason"]) == 1024  # the OpenAPI's maxLength
    assert shapes.event_entry("open", TS, "not json") == {
        "event_name": "opened",
        "processed": "2026-01-02T03:04:05Z",
    }


def test_message_detail() -> None:
    rows = [
        ("b@y.com", "processed", TS, "a@x.com", "Hi", "d-1", 7, ["c"], {"k": "v"}, data()),
        ("b@y.com", "delivered", TS, None, None, None, None, [], None, data()),
    ]
    detail = shapes.message("m1", rows)
    assert detail["status"] == "delivered" and detail["asm_group_id"] == 7
    assert (detail["from_email"], detail["template_id"]) == ("a@x.com", "d-1")
    assert detail["categories"] == ["c"] and detail["unique_args"] == '{"k":"v"}'
    assert [e["event_name"] for e in detail["events"]] == ["processed", "delivered"]
    bare = shapes.message("m2", [("b@y.com", "deferred", TS, None, None, None, None, [], None, "")])
    assert (bare["status"], bare["unique_args"], bare["from_email"]) == ("processed", "Null", "")
