"""Unit tests of :mod:`postline.accept.smtpapi`: what each key becomes, and one refusal per
rule, each checked for its reply code and for naming the key."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from postline.accept import unsupported
from postline.accept import validate_fields as vf
from postline.accept.smtpapi import (
    DOCS,
    FILTERS,
    KEYS,
    MAX_REPLY,
    SmtpApi,
    SmtpApiError,
    parse_smtpapi,
)

NOW = 1_700_000_000.0
HOUR = 3600
REPLY = re.compile(r"5\d\d 5\.\d{1,3}\.\d{1,3} [\x20-\x7e]+")


def parse(obj: Any, **kw: Any) -> SmtpApi:
    return parse_smtpapi(obj if isinstance(obj, str) else json.dumps(obj), now=NOW, **kw)


def refused(obj: Any, code: str = "550 5.6.0", **kw: Any) -> str:
    """The reply of a refused header, after checking its form."""
    with pytest.raises(SmtpApiError) as info:
        parse(obj, **kw)
    reply = info.value.reply
    assert REPLY.fullmatch(reply), reply
    assert len(reply) <= MAX_REPLY
    assert reply.startswith(f"{code} X-SMTPAPI: "), reply
    return reply


# -- accepted --------------------------------------------------------------------------------


def test_every_supported_key() -> None:
    api = parse(
        {
            "to": ["Ana <ana@x.example>", '"Doe Jr." <ben@y.example>', "cy@z.example"],
            "sub": {"-name-": ["Ana", 2, 1.5], "-x-": ["a", "b", "c"]},
            "section": {":hello": "Hello -name-"},
            "category": ["news", "weekly"],
            "unique_args": {"order": 1234, "ok": True, "no": False, "s": "v", "f": 0.5},
            "send_each_at": [1_700_000_000, 1_700_000_001, 1_700_000_002],
            "filters": {"clicktrack": {"settings": {"enable": 0}}},
        }
    )
    assert api.to == [
        ("Ana <ana@x.example>", "ana@x.example"),
        ('"Doe Jr." <ben@y.example>', "ben@y.example"),
        ("cy@z.example", "cy@z.example"),
    ]
    assert api.sub == {"-name-": ["Ana", "2", "1.5"], "-x-": ["a", "b", "c"]}
    assert api.section == {":hello": "Hello -name-"}
    assert api.categories == ["news", "weekly"]
    assert api.unique_args == {"order": "1234", "ok": "true", "no": "false", "s": "v", "f": "0.5"}
    assert api.send_at is None
    assert api.send_each_at == [1_700_000_000, 1_700_000_001, 1_700_000_002]


def test_nothing_set() -> None:
    assert parse({}) == SmtpApi(None, None, None, None, None, None, None)


def test_empty_values_ask_for_nothing() -> None:
    empty: dict[str, Any] = {"to": [], "sub": {}, "section": {}, "category": [], "unique_args": {}}
    unset: dict[str, Any] = {
        "batch_id": "",
        "asm_group_id": None,
        "asm_groups_to_display": [],
        "ip_pool": "",
    }
    assert parse({**empty, **unset, "filters": {}, "send_each_at": []}) == parse({})


def test_category_string_and_send_at() -> None:
    api = parse({"category": "news", "send_at": int(NOW) + 71 * HOUR})
    assert api.categories == ["news"]
    assert api.send_at == int(NOW) + 71 * HOUR


def test_send_at_in_the_past_is_accepted_as_on_the_http_path() -> None:
    assert parse({"send_at": int(NOW) - 10 * 24 * HOUR}).send_at == int(NOW) - 10 * 24 * HOUR


@pytest.mark.parametrize(
    ("entry", "header"),
    [
        ("<ana@x.example>", "ana@x.example"),
        ("  ana@x.example  ", "ana@x.example"),
        ("Ana Lopez <ana@x.example>", "Ana Lopez <ana@x.example>"),
        ('"Ana Lopez" <ana@x.example>', "Ana Lopez <ana@x.example>"),
        ("José <jose@x.example>", "José <jose@x.example>"),  # RFC 6532: kept as UTF-8
        ("A. Lopez <ana@x.example>", '"A. Lopez" <ana@x.example>'),
        ('"say \\"hi\\"" <ana@x.example>', '"say \\"hi\\"" <ana@x.example>'),
        ("ana@bücher.example", "ana@bücher.example"),
    ],
)
def test_to_forms(entry: str, header: str) -> None:
    api = parse({"to": [entry]})
    assert api.to is not None
    assert api.to[0][0] == header
    assert api.to[0][1] == header.rpartition("<")[2].rstrip(">")


def test_disabled_filters_are_accepted() -> None:
    off: list[Any] = [0, "0", False, None]
    filters = {name: {"settings": {"enable": off[i % 4]}} for i, name in enumerate(FILTERS)}
    filters["footer"] = {}  # no settings at all
    filters["dkim"] = {"settings": {"use_from": True}}  # what Postline does anyway
    assert parse({"filters": filters}).to is None


def test_folded_value_is_json_with_blanks() -> None:
    # relay_headers unfolds by removing CRLF only, which leaves the fold's blank
    api = parse('{"to": ["a@x.example",\t "b@y.example"],\r\n "category": "c"}'.replace("\r\n", ""))
    assert api.to is not None and len(api.to) == 2


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"to": ["a@x.example"', "it ends too early"),
        ('{"to": 1 2}', "not valid JSON at line 1 column 10"),
        ("{'to': []}", "not valid JSON at line 1 column 2"),
        ("[1, 2]", "not an array"),
        ('"to"', "not a string"),
        ("", "the header is empty"),
        ("   ", "the header is empty"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_not_a_json_object(text: str, expected: str) -> None:
    reply = refused(text)
    assert expected in reply
    assert reply.endswith(f"; see {DOCS}")


def test_unknown_key_is_named() -> None:
    reply = refused({"to": [], "unique_arg": {}})
    assert "unknown key 'unique_arg'" in reply
    for key in KEYS:
        assert key in reply


def test_reply_is_ascii_and_bounded_whatever_the_key() -> None:
    reply = refused({"clé\r\n" + "x" * 2000: 1})
    assert "'cl\\xe9??xxx" in reply  # escaped, controls replaced, shortened
    assert reply.endswith(DOCS)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"to": "a@x.example"}, "'to' must be an array"),
        ({"to": [1]}, "'to' item 0 must be a string"),
    ],
)
def test_to_shape(obj: dict[str, Any], expected: str) -> None:
    assert expected in refused(obj)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("not-an-address", vf.INVALID_RECIPIENT),
        ("Ana <ana@x>", vf.INVALID_RECIPIENT),
        ("ana@x.example>", vf.INVALID_RECIPIENT),
        ("Lopez, Ana <ana@x.example>", vf.NAME_SEPARATORS),
        ('"Lopez; Ana" <ana@x.example>', vf.NAME_SEPARATORS),
        ("Ana\r\nBcc: x <ana@x.example>", vf.NAME_CRLF),
    ],
)
def test_to_addresses_are_checked_as_http_recipients(entry: str, message: str) -> None:
    reply = refused({"to": ["ok@x.example", entry]}, code="550 5.1.3")
    assert "'to' item 1" in reply and message in reply


def test_too_many_recipients() -> None:
    to = [f"r{i}@x.example" for i in range(3)]
    assert parse({"to": to}, max_recipients=3).to is not None
    reply = refused({"to": to}, code="550 5.5.3", max_recipients=2)
    assert "'to' has 3 addresses; at most 2" in reply


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"sub": {"-n-": ["a"]}}, "'sub' needs 'to'"),
        ({"to": ["a@x.example"], "sub": ["-n-"]}, "'sub' must be an object"),
        ({"to": ["a@x.example"], "sub": {"-n-": "a"}}, "sub '-n-' has a string for 1 addresses"),
        ({"to": ["a@x.example"], "sub": {"-n-": ["a", "b"]}}, "sub '-n-' has 2 values for 1"),
        ({"to": ["a@x.example"], "sub": {"-n-": ["a\r\nBcc: x"]}}, "sub '-n-' contains CR or LF"),
        ({"to": ["a@x.example"], "sub": {"-n-": ["a\n"]}}, "sub '-n-' contains CR or LF"),
        ({"to": ["a@x.example"], "sub": {"-n-": [True]}}, "sub '-n-' must be strings or numbers"),
        ({"to": ["a@x.example"], "sub": {"-n-": [None]}}, "sub '-n-' must be strings or numbers"),
        ({"to": ["a@x.example"], "sub": {"-n-": [["a"]]}}, "sub '-n-' must be strings or numbers"),
        ({"to": ["a@x.example"], "sub": {"": ["a"]}}, "sub tag '' must be a non-empty string"),
        ({"to": ["a@x.example"], "sub": {"a\nb": ["a"]}}, "sub tag 'a?b' must be a non-empty"),
    ],
)
def test_sub(obj: dict[str, Any], expected: str) -> None:
    assert expected in refused(obj)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ([":a"], "'section' must be an object"),
        ({":a": 1}, "section ':a' must be a string"),
        ({"": "text"}, "section tag '' must be a non-empty string"),
    ],
)
def test_section(section: Any, expected: str) -> None:
    assert expected in refused({"section": section})


@pytest.mark.parametrize(
    ("category", "message"),
    [
        ([f"c{i}" for i in range(11)], vf.TOO_MANY_CATEGORIES),
        (["a", "a"], vf.CATEGORIES_UNIQUE),
        ("x" * 256, vf.CATEGORY_TOO_LONG),
        ("café", vf.CATEGORY_ASCII),
        (["a", 1], "'category' must be a string or an array of strings"),
        ({"a": 1}, "'category' must be a string or an array of strings"),
    ],
)
def test_category_limits_are_the_http_ones(category: Any, message: str) -> None:
    reply = refused({"category": category})
    assert "'category'" in reply and message in reply


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"a": {"b": 1}}, "unique_args 'a' must be a string, number or boolean, not an object"),
        ({"a": [1]}, "unique_args 'a' must be a string, number or boolean, not an array"),
        ({"a": None}, "unique_args 'a' must be a string, number or boolean, not null"),
        (["a"], "'unique_args' must be an object"),
        ({"a": "x" * 10_000}, "The unique_args may not exceed 10,000 bytes (JSON-encoded)"),
    ],
)
def test_unique_args(args: Any, expected: str) -> None:
    assert expected in refused({"unique_args": args})


def test_unique_args_at_the_size_limit() -> None:
    value = "x" * (vf.MAX_ARGS_BYTES - len('{"a":""}'))
    assert parse({"unique_args": {"a": value}}).unique_args == {"a": value}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"send_at": int(NOW) + 73 * HOUR}, vf.SCHEDULE_TOO_FAR),
        ({"send_at": -1}, vf.SEND_AT_NEGATIVE),
        ({"send_at": NOW + 0.5}, "'send_at' must be a unix timestamp in whole seconds"),
        ({"send_at": "1700000000"}, "'send_at' must be a unix timestamp"),
        ({"send_at": True}, "'send_at' must be a unix timestamp"),
        ({"send_at": 1, "send_each_at": [1]}, "'send_at' and 'send_each_at' cannot both be set"),
        ({"send_each_at": [1]}, "'send_each_at' has 1 times for no 'to'"),
        ({"to": ["a@x.example"], "send_each_at": [1, 2]}, "'send_each_at' has 2 times for 1"),
        ({"to": ["a@x.example"], "send_each_at": 1}, "'send_each_at' must be an array"),
        ({"to": ["a@x.example"], "send_each_at": [int(NOW) + 73 * HOUR]}, vf.SCHEDULE_TOO_FAR),
        ({"to": ["a@x.example"], "send_each_at": ["x"]}, "'send_each_at' must be a unix"),
    ],
)
def test_scheduling(obj: dict[str, Any], expected: str) -> None:
    assert expected in refused(obj)


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("enable", [1, "1", True])
def test_enabled_filters_are_refused_by_name(name: str, enable: Any) -> None:
    reply = refused({"filters": {name: {"settings": {"enable": enable}}}})
    assert f"filters.{name}" in reply
    assert reply.endswith(FILTERS[name])
    assert "Postline does not support" in reply


def test_filter_wording_is_the_http_paths() -> None:
    bypass = unsupported.BYPASS.format(name="filters.bypass_list_management")
    assert refused({"filters": {"bypass_list_management": {"settings": {"enable": 1}}}}).endswith(
        bypass
    )


def test_dkim_domain_is_refused() -> None:
    reply = refused({"filters": {"dkim": {"settings": {"domain": "other.example"}}}})
    assert "filters.dkim" in reply


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"clicktracking": {}}, "unknown filter 'clicktracking' in 'filters'"),
        (["clicktrack"], "'filters' must be an object"),
        ({"clicktrack": 1}, "filters.clicktrack must be an object"),
        ({"clicktrack": {"settings": 1}}, "filters.clicktrack must be an object"),
        ({"clicktrack": {"settings": {"enable": "yes"}}}, "filters.clicktrack.settings.enable"),
        ({"clicktrack": {"settings": {"enable": 2}}}, "must be 1 or 0, not '2'"),
    ],
)
def test_filter_shape(filters: Any, expected: str) -> None:
    assert expected in refused({"filters": filters})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_id", "MWYyNDQ4"),
        ("ip_pool", "marketing"),
    ],
)
def test_unsupported_keys_are_refused_when_set(key: str, value: Any) -> None:
    reply = refused({key: value})
    assert key in reply and "Postline does not support" in reply


def test_batch_id_wording_is_the_http_paths() -> None:
    assert refused({"batch_id": "b"}).endswith(unsupported.BATCH_ID)
