"""X-SMTPAPI ``asm_group_id`` / ``asm_groups_to_display``: parsed in the HTTP path's ranges,
every bad form a 550 naming the key (accept/smtpapi.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from postline.accept import validate_fields as vf
from postline.accept.smtpapi import SmtpApiError, parse_smtpapi

NOW = 1_700_000_000.0


def parse(obj: Any) -> tuple[int | None, tuple[int, ...]]:
    api = parse_smtpapi(json.dumps(obj), now=NOW)
    return api.asm_group_id, api.asm_groups_to_display


def refused(obj: Any) -> str:
    with pytest.raises(SmtpApiError) as info:
        parse_smtpapi(json.dumps(obj), now=NOW)
    assert info.value.reply.startswith("550 5.6.0 X-SMTPAPI: ")
    return info.value.reply


def test_group_and_groups_to_display() -> None:
    assert parse({}) == (None, ())
    assert parse({"asm_group_id": 0}) == (0, ())
    assert parse({"asm_group_id": vf.MAX_ID}) == (vf.MAX_ID, ())
    shown = list(range(vf.MAX_GROUPS_TO_DISPLAY))  # 25: the bound
    assert parse({"asm_group_id": 7, "asm_groups_to_display": shown}) == (7, tuple(shown))
    assert parse({"asm_group_id": None, "asm_groups_to_display": []}) == (None, ())


@pytest.mark.parametrize(
    ("obj", "named"),
    [
        ({"asm_group_id": -1}, "asm_group_id"),
        ({"asm_group_id": vf.MAX_ID + 1}, "asm_group_id"),
        ({"asm_group_id": "5"}, "asm_group_id"),
        ({"asm_group_id": True}, "asm_group_id"),
        ({"asm_group_id": 1.5}, "asm_group_id"),
        ({"asm_group_id": 1, "asm_groups_to_display": "1"}, "asm_groups_to_display"),
        ({"asm_group_id": 1, "asm_groups_to_display": [1, "2"]}, "asm_groups_to_display"),
        ({"asm_group_id": 1, "asm_groups_to_display": [-3]}, "asm_groups_to_display"),
        ({"asm_group_id": 1, "asm_groups_to_display": list(range(26))}, "asm_groups_to_display"),
        ({"asm_groups_to_display": [1]}, "asm_groups_to_display needs asm_group_id"),
    ],
)
def test_bad_values_are_refused_naming_the_key(obj: Any, named: str) -> None:
    assert named in refused(obj)
