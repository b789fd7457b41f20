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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec

from postline.accept import validate_fields as vf
from postline.accept.unsupported import BATCH_ID, BYPASS, _not_yet
from postline.accept.validate import _check_args_size
from postline.model.errors import FieldError
from postline.model.mail import EmailAddress

DOCS = "https://docs.sendgrid.com/for-developers/sending-email/building-an-x-smtpapi-header"
MAX_REPLY = 510  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF
MAX_SHOWN = 40  # characters of a client's key or value quoted in a reply

C550_CONTENT = "550 5.6.0"  # RFC 3463 X.6.0: other or undefined media (content) error
C550_ADDRESS = "550 5.1.3"  # X.1.3: bad destination mailbox address syntax
C550_TOO_MANY = "550 5.5.3"  # X.5.3: too many recipients

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


class SmtpApiError(Exception):
    """The header cannot be acted on; ``reply`` is the complete SMTP reply (one 5xx line)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


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


def smtp_reply(code: str, text: str, suffix: str = "") -> str:
    """``code text suffix`` as one ASCII line of at most :data:`MAX_REPLY` octets; the text
    (which may quote the client) is escaped and, when too long, shortened, the suffix kept."""
    text = _CONTROLS.sub("?", text.encode("ascii", "backslashreplace").decode("ascii"))
    room = MAX_REPLY - len(code) - 1 - len(suffix)
    if len(text) > room:
        text = text[: room - 3] + "..."
    return f"{code} {text}{suffix}"


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def _fail(text: str, code: str = C550_CONTENT, docs: bool = False) -> NoReturn:
    suffix = f"; see {DOCS}" if docs else ""
    raise SmtpApiError(smtp_reply(code, f"X-SMTPAPI: {text}", suffix))


def _show(value: object) -> str:
    """A client's key or value as quoted in a reply: short, one line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_SHOWN:
        text = text[: MAX_SHOWN - 3] + "..."
    return "'" + text + "'"


def parse_smtpapi(value: str, *, now: float, max_recipients: int = 10_000) -> SmtpApi:
    """The instructions of one X-SMTPAPI value (unfolded); :class:`SmtpApiError` if unusable."""
    obj = _decode(value)
    for key in obj:
        if key not in KEYS:
            _fail(f"unknown key {_show(key)}; the keys are {', '.join(KEYS)}", docs=True)
    for key, message in UNSUPPORTED.items():
        if _is_set(obj.get(key)):
            _fail(message)
    _check_filters(obj.get("filters"))
    to = _to(obj.get("to"), max_recipients)
    send_at, send_each_at = _schedule(obj.get("send_at"), obj.get("send_each_at"), to, now)
    group, display = _asm(obj.get("asm_group_id"), obj.get("asm_groups_to_display"))
    return SmtpApi(
        to=to,
        sub=_sub(obj.get("sub"), to),
        section=_section(obj.get("section")),
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
        _fail(f"asm_group_id must be an integer from 0 to {vf.MAX_ID}, not {_show(group)}")
    if display is None or display == []:
        return (group if isinstance(group, int) else None), ()
    if not isinstance(display, list) or not all(_group_id(g) for g in display):
        _fail(f"asm_groups_to_display must be an array of group ids, not {_show(display)}")
    if len(display) > vf.MAX_GROUPS_TO_DISPLAY:
        _fail(f"asm_groups_to_display: {vf.TOO_MANY_GROUPS}")
    if group is None:
        _fail("asm_groups_to_display needs asm_group_id: the group this message belongs to")
    assert isinstance(group, int)
    return group, tuple(display)


def _group_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= vf.MAX_ID


_decoder = msgspec.json.Decoder()
_AT_BYTE = re.compile(r"\s*\(byte (\d+)\)$")


def _decode(value: str) -> dict[str, Any]:
    raw = value.strip().encode("utf-8", "surrogatepass")
    if not raw:
        _fail("the header is empty; send one JSON object or remove the header", docs=True)
    try:
        obj = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        _fail(_json_problem(raw, str(exc)), docs=True)
    except RecursionError:
        _fail("not valid JSON: arrays and objects are nested too deeply", docs=True)
    if not isinstance(obj, dict):
        _fail(f"the value must be one JSON object ({{...}}), not {_json_type(obj)}", docs=True)
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


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else "an object"


def _is_set(value: object) -> bool:
    """None, "", [] and {} ask for nothing (as on the HTTP path); 0 is a value."""
    return value is not None and value != "" and value != [] and value != {}


# -- filters ---------------------------------------------------------------------------------


def _check_filters(filters: object) -> None:
    if filters is None:
        return
    if not isinstance(filters, dict):
        _fail('\'filters\' must be an object such as {"clicktrack": {"settings": {"enable": 0}}}')
    for name, spec in filters.items():
        if name not in FILTERS:
            _fail(
                f"unknown filter {_show(name)} in 'filters'; the filters are {', '.join(FILTERS)}"
            )
        settings = spec.get("settings") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(settings, dict | None):
            _fail(f'filters.{name} must be an object such as {{"settings": {{"enable": 0}}}}')
        if settings and _asks_for(name, settings):
            _fail(FILTERS[name])


def _asks_for(name: str, settings: dict[str, Any]) -> bool:
    """``enable`` 1, "1" or true asks for the feature; 0, "0", false or none does not."""
    enable = settings.get("enable")
    if enable is True or enable == "1" or (type(enable) is int and enable == 1):
        return True
    if not (
        enable is None or enable is False or enable == "0" or (type(enable) is int and enable == 0)
    ):
        _fail(f"filters.{name}.settings.enable must be 1 or 0, not {_show(enable)}")
    return name == "dkim" and _is_set(settings.get("domain"))


# -- recipients and substitutions -----------------------------------------------------------


def _to(value: object, limit: int) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        _fail("'to' must be an array of addresses such as [\"Ana <ana@example.com>\"]")
    if len(value) > limit:
        _fail(
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
        _fail(f"'to' item {i} must be a string such as \"Ana <ana@example.com>\"")
    text = entry.strip()
    m = _ANGLE.fullmatch(text)
    addr, name = (m["addr"].strip(), _unquote(m["name"])) if m else (text, None)
    address = EmailAddress(addr, name or None)
    if not vf.recipient_ok(address):
        errs: list[FieldError] = []
        vf.check_address(errs, "to", address, None, recipient=True)
        problem = errs[0].message if errs else vf.INVALID_RECIPIENT
        _fail(f"'to' item {i} {_show(entry)}: {problem}", C550_ADDRESS)
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


def _sub(value: object, to: list[tuple[str, str]] | None) -> dict[str, list[str]] | None:
    if not _is_set(value):
        return None
    if not isinstance(value, dict):
        _fail('\'sub\' must be an object such as {"-name-": ["Ana", "Ben"]}')
    if to is None:
        _fail(
            "'sub' needs 'to': each tag has one value per address in 'to'; add 'to' or remove 'sub'"
        )
    out: dict[str, list[str]] = {}
    for tag, values in value.items():
        _check_tag("sub", tag)
        if not isinstance(values, list) or len(values) != len(to):
            count = f"{len(values)} values" if isinstance(values, list) else _json_type(values)
            _fail(
                f"sub {_show(tag)} has {count} for {len(to)} addresses in 'to'; give an array "
                "with exactly one value per address"
            )
        out[tag] = [_sub_value(tag, v) for v in values]
    return out


def _sub_value(tag: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        _fail(f"the values of sub {_show(tag)} must be strings or numbers, not {_json_type(value)}")
    text = value if isinstance(value, str) else str(value)
    if vf.has_crlf(text):
        _fail(f"a value of sub {_show(tag)} contains CR or LF; values may not span lines")
    return text


def _check_tag(key: str, tag: str) -> None:
    if not tag or vf.has_crlf(tag):
        _fail(f"{key} tag {_show(tag)} must be a non-empty string without CR or LF")


def _section(value: object) -> dict[str, str] | None:
    if not _is_set(value):
        return None
    if not isinstance(value, dict):
        _fail('\'section\' must be an object such as {":greeting": "Hello -name-"}')
    for tag, text in value.items():
        _check_tag("section", tag)
        if not isinstance(text, str):
            _fail(f"section {_show(tag)} must be a string, not {_json_type(text)}")
    return value


# -- categories, unique_args, scheduling ----------------------------------------------------


def _categories(value: object) -> list[str] | None:
    if not _is_set(value):
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
        _fail("'category' must be a string or an array of strings")
    errs: list[FieldError] = []
    vf.check_categories(errs, items)
    if errs:
        _fail(f"'category': {errs[0].message}")
    return items


def _unique_args(value: object) -> dict[str, str] | None:
    if not _is_set(value):
        return None
    if not isinstance(value, dict):
        _fail('\'unique_args\' must be an object such as {"order": "1234"}')
    out: dict[str, str] = {}
    for key, v in value.items():
        if isinstance(v, bool):
            out[key] = "true" if v else "false"
        elif isinstance(v, str | int | float):
            out[key] = v if isinstance(v, str) else str(v)
        else:
            _fail(
                f"unique_args {_show(key)} must be a string, number or boolean, not "
                f"{_json_type(v)} (nested values are not supported)"
            )
    errs: list[FieldError] = []
    _check_args_size(errs, "unique_args", "unique_args", vf.json_size(out))
    if errs:
        _fail(errs[0].message)
    return out


def _schedule(
    send_at: object, each: object, to: list[tuple[str, str]] | None, now: float
) -> tuple[int | None, list[int] | None]:
    each = each if _is_set(each) else None
    if send_at is not None and each is not None:
        _fail("'send_at' and 'send_each_at' cannot both be set; use one of them")
    if send_at is not None:
        return _timestamp("send_at", send_at, now), None
    if each is None:
        return None, None
    if not isinstance(each, list):
        _fail("'send_each_at' must be an array of unix timestamps, one per address in 'to'")
    if to is None or len(each) != len(to):
        wanted = f"{len(to)} addresses in 'to'" if to else "no 'to'"
        _fail(f"'send_each_at' has {len(each)} times for {wanted}; give one time per address")
    return None, [_timestamp("send_each_at", t, now) for t in each]


def _timestamp(key: str, value: object, now: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{key!r} must be a unix timestamp in whole seconds, not {_show(value)}")
    errs: list[FieldError] = []
    vf.check_send_at(errs, key, value, now)
    if errs:
        _fail(f"{key!r} {value}: {errs[0].message}")
    return value
