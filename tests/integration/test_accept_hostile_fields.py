"""Hostile field values over HTTP against a real node (issue 10, items 2 and 5): each is a
400 naming its field (never a 500 with a traceback), and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.conftest import call, simple_mail, spool_snapshot

from postline.testing.node import NodeProcess

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    node = NodeProcess(tmp_path_factory.mktemp("hostile"), {"delivery": {"enabled": False}})
    node.start()
    node.key = node.create_key()  # type: ignore[attr-defined]
    yield node
    node.stop()


def post(node: Any, body: dict[str, Any] | bytes) -> tuple[int, list[dict[str, Any]]]:
    """Send ``body``; assert that it stored nothing and logged no traceback."""
    before = spool_snapshot(node.data_dir)
    log_before = len(node.log_tail(10**9))
    headers = {"Content-Type": "application/json"}
    r = call(node.http_port, "POST", "/v3/mail/send", body, key=node.key, headers=headers)
    after = spool_snapshot(node.data_dir)
    assert (after.messages, after.bodies, len(after.events)) == (
        before.messages,
        before.bodies,
        len(before.events),
    ), "stored"
    assert "Traceback" not in node.log_tail(10**9)[log_before:]
    return r.status, (r.json()["errors"] if r.body else [])


def in_personalization(**fields: Any) -> dict[str, Any]:
    return simple_mail(personalizations=[{"to": [{"email": "b@example.com"}], **fields}])


CASES: dict[str, tuple[dict[str, Any], str]] = {
    "send_at 10**30": (simple_mail(send_at=10**30), "send_at"),
    "send_at 2**63": (simple_mail(send_at=2**63), "send_at"),
    "send_at -1": (simple_mail(send_at=-1), "send_at"),
    "personal send_at -1": (in_personalization(send_at=-1), "personalizations.0.send_at"),
    "personal send_at -10**30": (
        in_personalization(send_at=-(10**30)),
        "personalizations.0.send_at",
    ),
    "group_id 2**64": (simple_mail(asm={"group_id": 2**64}), "asm.group_id"),
    "group_id -5": (simple_mail(asm={"group_id": -5}), "asm.group_id"),
    "groups_to_display 2**64": (
        simple_mail(asm={"group_id": 1, "groups_to_display": [2**64]}),
        "asm.groups_to_display.0",
    ),
    "template data int 2**64": (
        in_personalization(dynamic_template_data={"n": 2**64}),
        "personalizations.0.dynamic_template_data",
    ),
    "content_id é": (
        simple_mail(
            attachments=[
                {"content": "aGk=", "filename": "a.png", "disposition": "inline", "content_id": "é"}
            ]
        ),
        "attachments.0.content_id",
    ),
    "310 KB into 1 GB": (
        simple_mail(
            content=[{"type": "text/plain", "value": "-k-" * 100_000}],
            personalizations=[
                {"to": [{"email": "b@example.com"}], "substitutions": {"-k-": "x" * 9_990}}
            ],
        ),
        "personalizations.0.substitutions",
    ),
}


UNSUPPORTED = "Postline does not support"  # asm and templates are refused too (issue 12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_values_are_a_400_naming_the_field(node: Any, case: str) -> None:
    body, field = CASES[case]
    status, errors = post(node, body)
    assert status == 400, (case, errors)
    assert [e["field"] for e in errors if not e["message"].startswith(UNSUPPORTED)] == [field]


RAW_DEEP = {
    "top level": DEEP,
    "custom_args value": json.dumps(simple_mail())[:-1] + ', "custom_args": {"a": DEEP}}',
    "headers value": json.dumps(simple_mail())[:-1] + ', "headers": {"X-A": DEEP}}',
    "unknown field": json.dumps(simple_mail())[:-1] + ', "x": DEEP}',
    "template data": json.dumps(simple_mail())[:-1]
    + ', "personalizations": [{"to": [{"email": "b@example.com"}],'
    ' "dynamic_template_data": {"a": DEEP}}]}',
}


@pytest.mark.parametrize("where", sorted(RAW_DEEP))
def test_100000_nested_arrays_are_a_400(node: Any, where: str) -> None:
    status, errors = post(node, RAW_DEEP[where].replace("DEEP", DEEP).encode())
    assert status == 400, (where, errors)
    assert len(errors) == 1 and errors[0]["message"]


def test_template_data_nested_a_little_too_deep_names_its_field(node: Any) -> None:
    data: Any = 1
    for _ in range(40):
        data = {"a": data}
    status, errors = post(node, in_personalization(dynamic_template_data=data))
    assert status == 400
    assert [e["field"] for e in errors] == ["personalizations.0.dynamic_template_data"] * 2
