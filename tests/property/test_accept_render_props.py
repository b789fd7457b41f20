"""Whatever accept takes, delivery can render (issue 10, item 1c).

Hypothesis builds send requests as JSON, with any Unicode (no lone surrogates: JSON cannot
carry them to us) in every string field: names, subjects, header values, substitution
keys and values, contents, attachment filenames, types and content_ids, custom_args,
categories, template data. Each goes the way of a real request: ``decode_request`` →
``validate`` → ``expand`` → the spool's msgpack form → ``render`` as the engine calls it.
What validate accepts must render without raising, in lines of at most 998 octets.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from postline.accept.expand import expand
from postline.accept.validate import validate
from postline.deliver.render import render
from postline.model.mail import decode_body, decode_personalization, decode_request

NOW = 1_700_000_000.0
MAX_LINE = 998

# Any Unicode, weighted towards what breaks encoders: separators, controls, non-BMP.
awkward = st.sampled_from(
    ["é", "\u2028", "\u2029", "\x00", "\x7f", "\x85", "😀", "=?", "<", ">", ";", ",", '"', "\\"]
)
texts = st.one_of(
    st.text(max_size=20),
    st.lists(st.text(max_size=4) | awkward, max_size=8).map("".join),
)
long_texts = texts | st.builds(lambda t, n: t * n, texts, st.integers(1, 120))


def without(chars: str, strategy: st.SearchStrategy[str] = long_texts) -> st.SearchStrategy[str]:
    """``strategy`` with ``chars`` removed: what validation refuses is mostly left out, so
    that most examples reach rendering (a rule's refusals are tested elsewhere)."""
    table = str.maketrans("", "", chars)
    return strategy.map(lambda text: text.translate(table))


one_line = without("\r\n")
some = st.sampled_from
ftext = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=80,
)
local_parts = st.text(
    st.characters(categories=["L", "N"], include_characters="!#$%&'*+/=?^_`{|}~-"),
    min_size=1,
    max_size=20,
)
domains = some(["example.com", "b\u00fccher.example", "x.co", "mail.example.org"])
emails = st.emails() | st.builds(lambda lp, d: f"{lp}@{d}", local_parts, domains)


def address(email: str, name: str | None) -> dict[str, Any]:
    return {"email": email} if name is None else {"email": email, "name": name}


senders = st.builds(address, emails, st.none() | one_line)
recipients = st.builds(address, emails, st.none() | without("\r\n;,"))
mime_types = some(["image/png", "application/pdf", "text/calendar; method=REQUEST", "X/Y"])
content_ids = some(["logo", "part1.abc@example.com", "a" * 900]) | texts
attachments = st.fixed_dictionaries(
    {
        "content": st.binary(min_size=1, max_size=200).map(lambda b: base64.b64encode(b).decode()),
        "filename": without("\r\n;,").map(lambda t: t or "f"),
    },
    optional={
        "type": mime_types | texts,
        "disposition": some(["inline", "attachment"]),
        "content_id": content_ids,
    },
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=12,
)
headers = st.dictionaries(ftext, one_line, max_size=3)
substitutions = st.dictionaries(texts.map(lambda t: t or "-k-"), long_texts, max_size=4)
personalizations = st.fixed_dictionaries(
    {"to": st.lists(recipients, min_size=1, max_size=2)},
    optional={
        "cc": st.lists(recipients, max_size=2),
        "bcc": st.lists(recipients, max_size=2),
        "from": senders,
        "subject": one_line,
        "headers": headers,
        "substitutions": substitutions,
        "custom_args": st.dictionaries(texts, texts, max_size=3),
        "dynamic_template_data": st.dictionaries(texts, json_values, max_size=3),
        "send_at": st.integers(-10, int(NOW) + 3600),
    },
)
# text/plain first, then text/html, then others (SendGrid's order), now and then any type
valid_types = some(
    [["text/plain"], ["text/html"], ["text/plain", "text/html"], ["Text/Plain", "x/amp"]]
)
content_types = st.one_of(valid_types, valid_types, st.lists(texts, min_size=1, max_size=2))
contents = st.builds(
    lambda types, values: [{"type": t, "value": v} for t, v in zip(types, values, strict=False)],
    content_types,
    st.lists(long_texts.map(lambda t: t or "-"), min_size=3, max_size=3),
)
requests = st.fixed_dictionaries(
    {
        "personalizations": st.lists(personalizations, min_size=1, max_size=3),
        "from": senders,
        "subject": one_line.map(lambda t: t or "-"),
        "content": contents,
    },
    optional={
        "reply_to": senders,
        "headers": headers,
        "attachments": st.lists(attachments, max_size=3),
        "categories": st.lists(st.text(some("abc -~"), max_size=8), max_size=3, unique=True),
        "custom_args": st.dictionaries(texts, texts, max_size=3),
        "asm": st.fixed_dictionaries({"group_id": st.integers(-5, 2**64)}),
    },
)

outcomes: Counter[str] = Counter()


def render_all(raw: bytes) -> int:
    """Accept ``raw`` as the API does and render every message; how many were rendered."""
    try:
        req = decode_request(raw)
    except msgspec.DecodeError:
        return -1
    errors = validate(req, NOW)
    if errors:
        event(f"refused: {errors[0].field}")
        return -1
    batch = expand(
        req, tenant="t", node="n", host="h.example", now=NOW, max_age=60.0, x_message_id="X" * 22
    )
    body = decode_body(batch.body)  # the stored forms, as the engine decodes them
    for msg in batch.messages:
        pers = decode_personalization(msg.personalization)
        rendered = render(body, pers, message_id=msg.smtp_id, date=NOW)
        assert rendered.data.endswith(b"\r\n")
        longest = max(map(len, rendered.data.split(b"\r\n")))
        assert longest <= MAX_LINE, longest
    return len(batch.messages)


@given(requests)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_accept_takes_renders(body: dict[str, Any]) -> None:
    rendered = render_all(json.dumps(body).encode())
    outcomes["refused" if rendered < 0 else "rendered"] += 1


def test_the_generated_requests_are_mostly_accepted() -> None:
    """Guards the property above against refusing everything it generates."""
    if sum(outcomes.values()) < 100:
        pytest.skip("run with the property test")
    assert outcomes["rendered"] > outcomes["refused"] / 4, outcomes
