"""The X-SMTPAPI header (SendGrid's SMTP API): one JSON object → :class:`SmtpApi`, or a 5xx.

Pure: the relay (accept/relay.py) hands over the unfolded header value and gets either the
instructions or :class:`SmtpApiError` carrying the complete SMTP reply. SendGrid bounces a
message whose header it cannot parse to the envelope sender, after the 250; refusing at
the end of DATA tells the sending program at once, in the reply it logs. Nothing is
accepted and then ignored (the rule of the HTTP path, accept/unsupported.py):

=========================  ===================================================================
key                        in Postline
=========================  ===================================================================
to                         one message per address, each with its own To header; "addr" or
                           "Name <addr>", checked as the HTTP path checks recipients
sub                        {tag: [one value per "to" address]}; numbers become strings;
                           CR/LF refused (values may land in header fields)
section                    {tag: text}, replaced in the body after ``sub`` (deliver/render_raw)
category                   string or array; the HTTP path's limits (count, length, ASCII)
unique_args                flat object, values become strings; the custom_args size limit
send_at, send_each_at      the HTTP send_at range (not more than 72 h ahead); send_each_at
                           has one time per "to" address; both at once are refused
filters                    {name: {settings: {enable: 1}}}: none of the features exists yet,
                           so an enabled filter is refused naming it (a disabled one asks
                           for nothing); unknown filter names are refused
asm_group_id               the unsubscribe group (an integer): its members are dropped like
                           the global unsubscribes; a group the tenant lacks is refused by the
                           relay when the spool finds it missing (550 naming the key)
asm_groups_to_display      at most 25 group ids, each of which must exist; only with
                           asm_group_id
batch_id, ip_pool          refused when set, as their HTTP counterparts are
anything else              refused, naming the key
=========================  ===================================================================

The ``dkim`` filter has no ``enable`` in SendGrid's documentation but ``domain`` and
``use_from``; besides ``enable``, a ``domain`` is refused (Postline signs for the From
header's domain, which is what ``use_from`` asks for).

The replies are made in smtpapi_reply.py, the ``to``, ``sub`` and ``section`` keys are
checked in smtpapi_to.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from postline.accept import validate_fields as vf
from postline.accept.smtpapi_reply import (
    DOCS,
    MAX_REPLY,
    SmtpApiError,
    fail,
    is_set,
    json_type,
    show,
    smtp_reply,
)
from postline.accept.smtpapi_to import sections, substitutions, to_addresses
from postline.accept.unsupported import BATCH_ID, BYPASS, _not_yet
from postline.accept.validate import _check_args_size
from postline.model.errors import FieldError

__all__ = ["DOCS", "MAX_REPLY", "SmtpApi", "SmtpApiError", "parse_smtpapi", "smtp_reply"]

KEYS = (
    "to", "sub", "section", "category", "unique_args", "filters", "send_at", "send_each_at",
    "batch_id", "asm_group_id", "asm_groups_to_display", "ip_pool",
)  # fmt: skip


def _filter(what: str, name: str, first: str = "") -> str:
    return _not_yet(
        f"{what} (filters.{name})",
        f"{first}remove the filter or set filters.{name}.settings.enable to 0.",
    )


_TEMPLATE = "render the message yourself and send it as it should arrive; "
FILTERS: dict[str, str] = {
    "bypass_list_management": BYPASS.format(name="filters.bypass_list_management"),
    "clicktrack": _filter("click tracking", "clicktrack"),
    "opentrack": _filter("open tracking", "opentrack"),
    "subscriptiontrack": _filter("subscription tracking", "subscriptiontrack"),
    "ganalytics": _filter("Google Analytics link tagging", "ganalytics"),
    "footer": _filter("footers", "footer", "put the footer into the message; "),
    "templates": _filter("templates", "templates", _TEMPLATE),
    "template": _filter("legacy templates", "template", _TEMPLATE),
    "bcc": _filter("the bcc filter", "bcc", "add the address as one more RCPT TO; "),
    "spamcheck": _filter("spam checks", "spamcheck"),
    "dkim": _not_yet(
        "choosing the DKIM domain (filters.dkim)",
        "remove the filter: Postline signs for the From header's domain when it has its key.",
    ),
}
UNSUPPORTED: dict[str, str] = {
    "batch_id": BATCH_ID,
    "ip_pool": _not_yet(
        "IP pools (ip_pool)", "remove it: mail leaves from the node's own address."
    ),
}


@dataclass(frozen=True)
class SmtpApi:
    to: list[tuple[str, str]] | None  # (header form "Ana <ana@x.example>", addr-spec)
    sub: dict[str, list[str]] | None  # tag -> one value per "to" address
    section: dict[str, str] | None
    categories: list[str] | None
    unique_args: dict[str, str] | None
    send_at: int | None
    send_each_at: list[int] | None  # one per "to" address
    asm_group_id: int | None = None
    asm_groups_to_display: tuple[int, ...] = ()


def parse_smtpapi(value: str, *, now: float, max_recipients: int = 10_000) -> SmtpApi:
    """The instructions of one X-SMTPAPI value (unfolded); :class:`SmtpApiError` if unusable."""
    obj = _decode(value)
    for key in obj:
        if key not in KEYS:
            fail(f"unknown key {show(key)}; the keys are {', '.join(KEYS)}", docs=True)
    for key, message in UNSUPPORTED.items():
        if is_set(obj.get(key)):
            fail(message)
    _check_filters(obj.get("filters"))
    to = to_addresses(obj.get("to"), max_recipients)
    send_at, send_each_at = _schedule(obj.get("send_at"), obj.get("send_each_at"), to, now)
    group, display = _asm(obj.get("asm_group_id"), obj.get("asm_groups_to_display"))
    return SmtpApi(
        to=to,
        sub=substitutions(obj.get("sub"), to),
        section=sections(obj.get("section")),
        categories=_categories(obj.get("category")),
        unique_args=_unique_args(obj.get("unique_args")),
        send_at=send_at,
        send_each_at=send_each_at,
        asm_group_id=group,
        asm_groups_to_display=display,
    )


def _asm(group: object, display: object) -> tuple[int | None, tuple[int, ...]]:
    """asm_group_id and asm_groups_to_display, in the HTTP path's ranges and words."""
    if group is not None and not _group_id(group):
        fail(f"asm_group_id must be an integer from 0 to {vf.MAX_ID}, not {show(group)}")
    if display is None or display == []:
        return (group if isinstance(group, int) else None), ()
    if not isinstance(display, list) or not all(_group_id(g) for g in display):
        fail(f"asm_groups_to_display must be an array of group ids, not {show(display)}")
    if len(display) > vf.MAX_GROUPS_TO_DISPLAY:
        fail(f"asm_groups_to_display: {vf.TOO_MANY_GROUPS}")
    if group is None:
        fail("asm_groups_to_display needs asm_group_id: the group this message belongs to")
    assert isinstance(group, int)
    return group, tuple(display)


def _group_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= vf.MAX_ID


_decoder = msgspec.json.Decoder()
_AT_BYTE = re.compile(r"\s*\(byte (\d+)\)$")


def _decode(value: str) -> dict[str, Any]:
    raw = value.strip().encode("utf-8", "surrogatepass")
    if not raw:
        fail("the header is empty; send one JSON object or remove the header", docs=True)
    try:
        obj = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        fail(_json_problem(raw, str(exc)), docs=True)
    except RecursionError:
        fail("not valid JSON: arrays and objects are nested too deeply", docs=True)
    if not isinstance(obj, dict):
        fail(f"the value must be one JSON object ({{...}}), not {json_type(obj)}", docs=True)
    return obj


def _json_problem(raw: bytes, message: str) -> str:
    """msgspec's message with the byte offset as line and column (1-based)."""
    message = message.removeprefix("JSON is malformed: ")
    if message == "Input data was truncated":
        return "not valid JSON: it ends too early (a missing quote, ] or }?)"
    at = _AT_BYTE.search(message)
    if at is None:
        return f"not valid JSON: {message}"
    offset = int(at[1])
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return f"not valid JSON at line {line} column {column}: {message[: at.start()]}"


# -- filters ---------------------------------------------------------------------------------


def _check_filters(filters: object) -> None:
    if filters is None:
        return
    if not isinstance(filters, dict):
        fail('\'filters\' must be an object such as {"clicktrack": {"settings": {"enable": 0}}}')
    for name, spec in filters.items():
        if name not in FILTERS:
            fail(f"unknown filter {show(name)} in 'filters'; the filters are {', '.join(FILTERS)}")
        settings = spec.get("settings") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(settings, dict | None):
            fail(f'filters.{name} must be an object such as {{"settings": {{"enable": 0}}}}')
        if settings and _asks_for(name, settings):
            fail(FILTERS[name])


def _asks_for(name: str, settings: dict[str, Any]) -> bool:
    """``enable`` 1, "1" or true asks for the feature; 0, "0", false or none does not."""
    enable = settings.get("enable")
    if enable is True or enable == "1" or (type(enable) is int and enable == 1):
        return True
    if not (
        enable is None or enable is False or enable == "0" or (type(enable) is int and enable == 0)
    ):
        fail(f"filters.{name}.settings.enable must be 1 or 0, not {show(enable)}")
    return name == "dkim" and is_set(settings.get("domain"))


# -- categories, unique_args, scheduling ----------------------------------------------------


def _categories(value: object) -> list[str] | None:
    if not is_set(value):
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
        fail("'category' must be a string or an array of strings")
    errs: list[FieldError] = []
    vf.check_categories(errs, items)
    if errs:
        fail(f"'category': {errs[0].message}")
    return items


def _unique_args(value: object) -> dict[str, str] | None:
    if not is_set(value):
        return None
    if not isinstance(value, dict):
        fail('\'unique_args\' must be an object such as {"order": "1234"}')
    out: dict[str, str] = {}
    for key, v in value.items():
        if isinstance(v, bool):
            out[key] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            out[key] = v if isinstance(v, str) else str(v)
        else:
            fail(
                f"unique_args {show(key)} must be a string, number or boolean, not "
                f"{json_type(v)} (nested values are not supported)"
            )
    errs: list[FieldError] = []
    _check_args_size(errs, "unique_args", "unique_args", vf.json_size(out))
    if errs:
        fail(errs[0].message)
    return out


def _schedule(
    send_at: object, each: object, to: list[tuple[str, str]] | None, now: float
) -> tuple[int | None, list[int] | None]:
    each = each if is_set(each) else None
    if send_at is not None and each is not None:
        fail("'send_at' and 'send_each_at' cannot both be set; use one of them")
    if send_at is not None:
        return _timestamp("send_at", send_at, now), None
    if each is None:
        return None, None
    if not isinstance(each, list):
        fail("'send_each_at' must be an array of unix timestamps, one per address in 'to'")
    if to is None or len(each) != len(to):
        wanted = f"{len(to)} addresses in 'to'" if to else "no 'to'"
        fail(f"'send_each_at' has {len(each)} times for {wanted}; give one time per address")
    return None, [_timestamp("send_each_at", t, now) for t in each]


def _timestamp(key: str, value: object, now: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"{key!r} must be a unix timestamp in whole seconds, not {show(value)}")
    errs: list[FieldError] = []
    vf.check_send_at(errs, key, value, now)
    if errs:
        fail(f"{key!r} {value}: {errs[0].message}")
    return value
