"""The X-SMTPAPI ``to``, ``sub`` and ``section`` keys (smtpapi.py): the addresses, checked
as the HTTP path checks recipients, each in its header form; one substitution value per
address; the section texts."""

from __future__ import annotations

import re

from postline.accept import validate_fields as vf
from postline.accept.smtpapi_reply import C550_ADDRESS, C550_TOO_MANY, fail, is_set, json_type, show
from postline.model.errors import FieldError
from postline.model.mail import EmailAddress


def to_addresses(value: object, limit: int) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        fail("'to' must be an array of addresses such as [\"Ana <ana@example.com>\"]")
    if len(value) > limit:
        fail(
            f"'to' has {len(value):,} addresses; at most {limit:,} are allowed per message: "
            "send the rest in another message",
            C550_TOO_MANY,
        )
    return [_recipient(i, entry) for i, entry in enumerate(value)] or None


_ANGLE = re.compile(r"(?P<name>.*?)\s*<(?P<addr>[^<>]*)>", re.DOTALL)
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff"  # RFC 5322 atext, RFC 6532 UTF-8
_ATOMS = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")


def _recipient(i: int, entry: object) -> tuple[str, str]:
    """(header form, addr-spec) of ``"addr"`` or ``"Name <addr>"``."""
    if not isinstance(entry, str):
        fail(f"'to' item {i} must be a string such as \"Ana <ana@example.com>\"")
    text = entry.strip()
    m = _ANGLE.fullmatch(text)
    addr, name = (m["addr"].strip(), _unquote(m["name"])) if m else (text, None)
    address = EmailAddress(addr, name or None)
    if not vf.recipient_ok(address):
        errs: list[FieldError] = []
        vf.check_address(errs, "to", address, None, recipient=True)
        problem = errs[0].message if errs else vf.INVALID_RECIPIENT
        fail(f"'to' item {i} {show(entry)}: {problem}", C550_ADDRESS)
    return _mailbox(name, addr), addr


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1], flags=re.DOTALL)
    return name


def _mailbox(name: str | None, addr: str) -> str:
    """RFC 5322 name-addr (the name as atoms or a quoted-string; UTF-8 kept, RFC 6532)."""
    if not name:
        return addr
    if _ATOMS.fullmatch(name):
        return f"{name} <{addr}>"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{addr}>'


def substitutions(value: object, to: list[tuple[str, str]] | None) -> dict[str, list[str]] | None:
    if not is_set(value):
        return None
    if not isinstance(value, dict):
        fail('\'sub\' must be an object such as {"-name-": ["Ana", "Ben"]}')
    if to is None:
        fail(
            "'sub' needs 'to': each tag has one value per address in 'to'; add 'to' or remove 'sub'"
        )
    out: dict[str, list[str]] = {}
    for tag, values in value.items():
        _check_tag("sub", tag)
        if not isinstance(values, list) or len(values) != len(to):
            count = f"{len(values)} values" if isinstance(values, list) else json_type(values)
            fail(
                f"sub {show(tag)} has {count} for {len(to)} addresses in 'to'; give an array "
                "with exactly one value per address"
            )
        out[tag] = [_sub_value(tag, v) for v in values]
    return out


def _sub_value(tag: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        fail(f"the values of sub {show(tag)} must be strings or numbers, not {json_type(value)}")
    text = value if isinstance(value, str) else str(value)
    if vf.has_crlf(text):
        fail(f"a value of sub {show(tag)} contains CR or LF; values may not span lines")
    return text


def _check_tag(key: str, tag: str) -> None:
    if not tag or vf.has_crlf(tag):
        fail(f"{key} tag {show(tag)} must be a non-empty string without CR or LF")


def sections(value: object) -> dict[str, str] | None:
    if not is_set(value):
        return None
    if not isinstance(value, dict):
        fail('\'section\' must be an object such as {":greeting": "Hello -name-"}')
    for tag, text in value.items():
        _check_tag("section", tag)
        if not isinstance(text, str):
            fail(f"section {show(tag)} must be a string, not {json_type(text)}")
    return value
