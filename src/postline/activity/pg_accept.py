"""An accept-time event's categories and custom args, parsed in Python by the ingest
(pg_messages.py) exactly as PostgreSQL's jsonb functions give them for the same JSON
(pg_schema.categories_of / unique_args_of, which the search over events applied, and
migration 6 still does): the categories as ``text[]`` (a list, or one string; a string
element as it is, null as NULL, any other element as jsonb prints it), the custom args
(the keys that are not SendGrid's own) as strings (any other value as jsonb prints it).

Parsing here costs ~2 us a message; the jsonb functions cost 12 us in the upsert. jsonb
refuses a NUL character, a lone surrogate and a number beyond numeric's range: a value
holding one is left out (the search over events failed on the whole document instead),
and data that is not JSON gives none. tests/property/test_pg_activity_json_props.py
checks the two against each other on random JSON.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec

from postline.activity.schema import EVENT_KEYS

_RESERVED = frozenset(EVENT_KEYS)
_json = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def accept_fields(data: bytes) -> tuple[list[str | None], str]:
    """(categories, custom args as a JSON object) of the event JSON ``data``, as
    pg_schema.categories_of and unique_args_of give them (module docstring)."""
    categories, args = parse_accept(data)
    return categories, _encode(args).decode()


def parse_accept(data: bytes) -> tuple[list[str | None], dict[str, str]]:
    """accept_fields' values, the custom args as a dict."""
    try:
        obj = _json(data)
    except msgspec.DecodeError:  # not JSON, or a number msgspec cannot hold
        return _exact_fields(data)
    if not isinstance(obj, dict):
        return [], {}
    category = obj.get("category")
    categories: list[str | None]
    if isinstance(category, str):
        categories = [category] if "\x00" not in category else []
    elif isinstance(category, list):
        if not all(type(c) is str for c in category):
            return _exact_fields(data)
        categories = [c for c in category if "\x00" not in c]
    else:
        categories = []
    args: dict[str, str] = {}
    for key in obj.keys() - _RESERVED:
        value = obj[key]
        if type(value) is not str:
            return _exact_fields(data)
        if "\x00" not in key and "\x00" not in value:
            args[key] = value
    return categories, args


class _Number(str):
    """A JSON number's text, as written."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_fields(data: bytes) -> tuple[list[str | None], dict[str, str]]:
    """accept_fields for JSON with values that are not strings: numbers kept as written."""
    try:
        obj = json.loads(data, parse_float=_Number, parse_int=_Number, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return [], {}
    if not isinstance(obj, dict):
        return [], {}
    category = obj.get("category")
    categories: list[str | None] = []
    if isinstance(category, str) and not isinstance(category, _Number):
        categories = [category] if _storable(category) else []
    elif isinstance(category, list):
        for item in category:
            if item is None:
                categories.append(None)  # jsonb_array_elements_text gives NULL for null
            elif isinstance(item, str) and not isinstance(item, _Number):
                if _storable(item):
                    categories.append(item)
            elif (text := jsonb_text(item)) is not None:
                categories.append(text)
    args: dict[str, str] = {}
    for key, value in obj.items():
        if key in _RESERVED or not _storable(key):
            continue
        if isinstance(value, str) and not isinstance(value, _Number):
            text = value if _storable(value) else None
        else:
            text = jsonb_text(value)
        if text is not None:
            args[key] = text
    return categories, args


def _storable(s: str) -> bool:
    """Whether jsonb holds ``s``: no NUL, no lone surrogate."""
    if "\x00" in s:
        return False
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


_SHORT = {ord(c): "\\" + e for c, e in zip('"\\\b\f\n\r\t', '"\\bfnrt', strict=True)}
_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)} | _SHORT  # as PostgreSQL's escape_json


def jsonb_text(value: object) -> str | None:
    """``value`` (as _exact_fields parses it) as PostgreSQL prints it as jsonb, or None
    when jsonb would refuse it: keys ordered by length then bytes, the last of duplicate
    keys kept (json.loads does too), ``", "`` and ``": "`` between items, numbers as
    ``numeric`` prints them."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _Number):
        return _numeric(value)
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"' if _storable(value) else None
    if isinstance(value, list):
        items = []
        for item in value:
            if (text := jsonb_text(item)) is None:
                return None
            items.append(text)
        return "[" + ", ".join(items) + "]"
    if isinstance(value, dict):
        pairs = []
        for key in sorted(value, key=_jsonb_order):
            name, text = jsonb_text(key), jsonb_text(value[key])
            if name is None or text is None:
                return None
            pairs.append(f"{name}: {text}")
        return "{" + ", ".join(pairs) + "}"
    return None


def _jsonb_order(key: str) -> tuple[int, bytes]:
    """jsonb's order of an object's keys: shorter first (in bytes), then bytewise (a key
    that is not storable sorts anywhere: it makes the whole value None)."""
    raw = key.encode("utf-8", "replace")
    return len(raw), raw


# PostgreSQL 15's numeric: the largest display scale, and weight (in base-10000 digits),
# and the exponents numeric_in reads at all.
_DSCALE_MAX = 0x3FFF
_WEIGHT_MAX = 0x7FFF
_EXPONENT_MAX = 2**31 // 2 - 1


def _numeric(text: str) -> str | None:
    """A JSON number as PostgreSQL's numeric prints it (the scale as written, less the
    exponent; no sign on zero); None for one numeric cannot hold."""
    _, _, written = text.lower().partition("e")
    if written and abs(int(written)) >= _EXPONENT_MAX:
        return None
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # a JSON number is finite
    if -exponent > _DSCALE_MAX or (not number.is_zero() and number.adjusted() // 4 > _WEIGHT_MAX):
        return None
    out = format(number, "f")
    return out.lstrip("-") if number.is_zero() else out
