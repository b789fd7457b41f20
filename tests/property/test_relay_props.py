"""Properties of the relay's pure parts under random input: header_end gives the same answer
however the message arrives, prepare_headers changes only what it says it changes, nothing
raises but the errors that carry a reply, and render_raw does what a naive model does."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from postline.accept.relay_headers import (
    HeaderError,
    field_name,
    header_end,
    prepare_headers,
    received_field,
    split_fields,
)
from postline.accept.smtpapi import FILTERS, KEYS, MAX_REPLY, SmtpApi, SmtpApiError, parse_smtpapi
from postline.deliver.render_raw import render_raw
from postline.model.relay import RelayMessage

pytestmark = pytest.mark.timeout(120)

NOW = 1_700_000_000.0
REPLY = re.compile(r"5\d\d 5\.\d{1,3}\.\d{1,3} [\x20-\x7e]+")
RECEIVED = b"Received: from c (unknown [127.0.0.1])\r\n\tby mx.test (Postline) with ESMTP id Q\r\n"

# -- messages --------------------------------------------------------------------------------

NAMES = [b"From", b"To", b"Subject", b"X-SMTPAPI", b"x-smtpapi", b"Message-ID", b"Date", b"X-A"]
names = st.one_of(st.sampled_from(NAMES), st.binary(min_size=1, max_size=6))
values = st.one_of(
    st.sampled_from([b" a@x.example", b" <m@x>", b" ", b"", b' {"category": "c"}', b" \xc3\xa9"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
folds = st.lists(st.sampled_from([b" more", b"\tmore", b" "]), max_size=2)


@st.composite
def fields(draw: st.DrawFn) -> bytes:
    name = draw(names)
    lines = [name + draw(st.sampled_from([b":", b" :", b"\t:"])) + draw(values)]
    lines += draw(folds)
    return b"\r\n".join(lines) + b"\r\n"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    head = b"".join(draw(st.lists(fields(), max_size=6)))
    sep = draw(st.sampled_from([b"\r\n", b"", b"\r\n\r\n"]))
    body = draw(st.sampled_from([b"", b"body\r\n", b"a: b\r\n", b" x\r\n", b"\r\n.\r\n"]))
    tail = draw(st.binary(max_size=8))
    return head + sep + body + draw(st.sampled_from([b"", tail]))


anything = st.one_of(messages(), st.binary(max_size=80))


@given(anything)
@example(b"A: b\r\n\r")
@example(b"A: b\r\nX\r")
@example(b"\r")
def test_header_end_is_the_same_however_the_message_arrives(msg: bytes) -> None:
    whole = header_end(msg, final=True)
    end, start = whole
    assert 0 <= end <= start <= len(msg) and start - end in (0, 2)
    answered = False
    for k in range(len(msg) + 1):
        got = header_end(msg[:k], final=False)
        if got is None:
            assert not answered, "an answer was taken back"
        else:
            assert got == whole
            answered = True


@given(anything)
def test_header_end_section_is_header_lines(msg: bytes) -> None:
    end, start = header_end(msg, final=True)
    for field in split_fields(msg[:end]):
        assert field_name(field) != b""  # every field of the section has a name
    if start == end + 2:
        assert msg[end:start] == b"\r\n"


@given(st.lists(fields(), max_size=8), st.sampled_from(["", "env@s.example"]))
def test_prepare_headers_keeps_every_other_byte(items: list[bytes], sender: str) -> None:
    section = b"".join(items)
    try:
        new, info = prepare_headers(
            section, received=RECEIVED, envelope_sender=sender, message_id="<g@h>", date="D"
        )
    except HeaderError as exc:
        assert REPLY.fullmatch(exc.reply) and len(exc.reply) <= MAX_REPLY
        return
    kept = [
        f
        for f in items
        if field_name(f) != b"x-smtpapi"
        and not (field_name(f) == b"message-id" and not f.split(b":", 1)[1].strip(b" \t\r\n"))
    ]
    assert new.startswith(RECEIVED + b"".join(kept))
    added = new[len(RECEIVED + b"".join(kept)) :]
    assert re.fullmatch(
        rb"(Message-ID: <g@h>\r\n)?(Date: D\r\n)?(From: env@s\.example\r\n)?", added
    )
    names = [field_name(f) for f in split_fields(new)]
    assert names.count(b"x-smtpapi") == 0
    assert names.count(b"message-id") >= 1 and names.count(b"date") >= 1
    assert names.count(b"from") >= 1
    assert info.eight_bit == (not new.isascii())


@given(st.binary(max_size=120), st.sampled_from(["", "env@s.example", "bøb@bücher.example"]))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_header_functions_raise_only_header_error(data: bytes, sender: str) -> None:
    for final in (False, True):
        header_end(data, final=final)
    try:
        new, info = prepare_headers(
            data, received=RECEIVED, envelope_sender=sender, message_id="<g@h>", date="D"
        )
    except HeaderError as exc:
        assert REPLY.fullmatch(exc.reply) and len(exc.reply) <= MAX_REPLY
        return
    assert new.startswith(RECEIVED) and new.endswith(b"\r\n")
    assert info.message_id


@given(st.text(max_size=300), st.text(max_size=300), st.one_of(st.none(), st.text(max_size=600)))
def test_received_field_is_three_lines_whatever_the_client_says(
    helo: str, host: str, rcpt: str | None
) -> None:
    field = received_field(
        helo=helo,
        client_ip=host,
        client_host=host or None,
        hostname="mx.test",
        protocol="ESMTPS",
        queue_id="Q",
        recipient=rcpt,
        when=NOW,
    )
    lines = field.split(b"\r\n")
    assert len(lines) == 4 and lines[3] == b""
    assert lines[0].startswith(b"Received: from ") and lines[1].startswith(b"\tby mx.test ")
    assert lines[2].startswith(b"\t")
    assert all(len(line) <= 998 and b"\r" not in line and b"\n" not in line for line in lines)


# -- X-SMTPAPI -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["a@x.example", "Ana <ana@x.example>", "", "1", "0", "-n-", "bad"]),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["settings", "enable", "domain", "-n-", ":s"]), st.text(max_size=4)
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
top = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.sampled_from(sorted(FILTERS)), st.text(max_size=4)),
    json_values,
    max_size=5,
)


@st.composite
def json_ish(draw: st.DrawFn) -> str:
    text = json.dumps(draw(st.one_of(top, json_values)), ensure_ascii=draw(st.booleans()))
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    return draw(
        st.sampled_from(
            [text, text[:cut], text[:cut] + draw(st.text(max_size=3)) + text[cut:], "\r\n" + text]
        )
    )


@given(json_ish())
@example('{"to": ["a@x.example"], "sub": {"-n-": [1]}, "send_each_at": [1700000000]}')
@example('{"filters": {"dkim": {"settings": {"domain": "x"}}}}')
@example('{"unique_args": {"a": 1e308}, "send_at": 1e400}')
@example("\ud800")
def test_parse_smtpapi_raises_only_smtpapi_error(value: str) -> None:
    try:
        api = parse_smtpapi(value, now=NOW, max_recipients=3)
    except SmtpApiError as exc:
        assert REPLY.fullmatch(exc.reply), exc.reply
        assert len(exc.reply) <= MAX_REPLY
        return
    assert isinstance(api, SmtpApi)
    n = len(api.to) if api.to else 0
    assert all(len(v) == n for v in (api.sub or {}).values())
    assert api.send_each_at is None or len(api.send_each_at) == n
    assert not (api.send_at is not None and api.send_each_at is not None)
    assert all(isinstance(v, str) for v in (api.unique_args or {}).values())


# -- render_raw ------------------------------------------------------------------------------

tags = st.sampled_from(["-a-", "-ab-", "a", "%x%", "é", ":s"])
sub_tables = st.dictionaries(tags, st.text(alphabet="ab-é: ", max_size=4), max_size=3)
bodies = st.text(alphabet="ab-éx%: \r\n", max_size=40).map(
    lambda t: re.sub(r"\r?\n|\r", "\r\n", t).encode()
)


def naive(text: bytes, table: dict[str, str]) -> bytes:
    """One pass, longest tag first, as a reference."""
    if not table:
        return text
    keys = sorted((k.encode() for k in table), key=len, reverse=True)
    pattern = re.compile(b"|".join(map(re.escape, keys)))
    return pattern.sub(lambda m: table[m[0].decode()].encode(), text)


@given(sub_tables, bodies, st.sampled_from(["", "Subject: a -a- é\r\n"]))
def test_render_raw_substitutes_like_a_naive_model(
    sub: dict[str, str], body: bytes, subject: str
) -> None:
    raw = RECEIVED + subject.encode() + b"\r\n" + body
    out = render_raw(raw, RelayMessage("s@x.example", sub=sub or None), max_size=10**6)
    if not sub:
        assert out.data is raw
        return
    head, sep, rest = out.data.partition(b"\r\n\r\n")
    assert head + sep == naive(RECEIVED + subject.encode(), sub) + b"\r\n"
    assert rest == naive(body, sub)
    if raw.isascii():  # else the stored message says it is 8-bit (RelayMessage.eight_bit)
        assert out.eight_bit == (not out.data.isascii())


@given(sub_tables, bodies, st.integers(min_value=0, max_value=400))
def test_render_raw_never_exceeds_max_size(sub: dict[str, str], body: bytes, limit: int) -> None:
    raw = RECEIVED + b"\r\n" + body
    m = RelayMessage("s@x.example", to_header="a@y.example", sub=sub or None)
    try:
        out = render_raw(raw, m, max_size=limit)
    except ValueError:
        full = render_raw(raw, m, max_size=10**6)
        assert len(full.data) > limit
        return
    assert len(out.data) <= limit


@given(
    name=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    local=st.from_regex(r"[A-Za-z0-9._%+-]{1,12}", fullmatch=True),
    domain=st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,5}", fullmatch=True),
    quoted=st.booleans(),
)
def test_the_from_fast_path_agrees_with_email_utils(
    name: str, local: str, domain: str, quoted: bool
) -> None:
    """The regex shortcut for From values gives what email.utils.getaddresses gives,
    whenever it answers (otherwise getaddresses itself runs)."""
    import email.utils

    from postline.accept.relay_headers import _SIMPLE_FROM, _first_mailbox

    addr = f"{local}@{domain}"
    for value in (addr, f"{name} <{addr}>", f'"{name}" <{addr}>' if quoted else f"<{addr}>"):
        raw = value.encode()
        if _SIMPLE_FROM.fullmatch(raw) is None:
            continue
        found = email.utils.getaddresses([value])
        expected = found[0][1] if found and "@" in found[0][1] else None
        assert _first_mailbox(raw) == expected, value
