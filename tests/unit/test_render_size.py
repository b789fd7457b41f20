"""The rendered size is bounded (issue 10, item 2): accept refuses what substitutions could
grow past 30 MB, rendering refuses what is past twice that, and the bound is a true bound."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.accept.validate import MAX_MESSAGE_BYTES, validate
from postline.deliver.render import RenderError, render
from postline.model.mail import (
    Content,
    EmailAddress,
    MailBody,
    MailSendRequest,
    Personalization,
    decode_request,
)
from postline.model.size import RENDER_LIMIT, SizeBound, growth_extremes, octets

NOW = 1_700_000_000.0
VALUE = "x" * 9_990  # about the largest value 10,000 bytes of substitutions JSON allow


def request(content: str, *subs: dict[str, str], subject: str = "Hi") -> dict[str, Any]:
    return {
        "personalizations": [
            {"to": [{"email": f"u{i}@example.com"}], "substitutions": s} for i, s in enumerate(subs)
        ],
        "from": {"email": "alice@example.com"},
        "subject": subject,
        "content": [{"type": "text/plain", "value": content}],
    }


def check(body: dict[str, Any]) -> list[tuple[str | None, str]]:
    raw = json.dumps(body).encode()
    return [(e.field, e.message) for e in validate(decode_request(raw), NOW)]


def test_a_310_kb_request_that_would_render_1_gb_is_refused() -> None:
    body = request("-k-" * 100_000, {"-k-": VALUE})
    assert len(json.dumps(body)) < 320_000
    ((field, message),) = check(body)
    assert field == "personalizations.0.substitutions"
    assert "999,000,002 bytes" in message and "31,457,280 bytes (30 MB)" in message


def test_a_50_kb_request_that_would_render_2_x_100_mb_is_refused_per_personalization() -> None:
    body = request("-k-" * 10_000, {"-k-": VALUE}, {"-k-": "short"}, {"-k-": VALUE})
    assert len(json.dumps(body)) < 55_000
    assert [f for f, _ in check(body)] == [
        "personalizations.0.substitutions",
        "personalizations.2.substitutions",
    ]


def test_the_limit_is_the_message_size_limit() -> None:
    occurrences = 3_000
    growth = len(VALUE) - len("-k-")
    fixed = SizeBound(MailSendRequest(subject="Hi", content=[Content("text/plain", "")])).size(
        Personalization()
    )
    room = MAX_MESSAGE_BYTES - fixed - occurrences * growth  # what the filler may take
    under = request("-k-" * occurrences + "." * (room - 3 * occurrences - 1), {"-k-": VALUE})
    assert check(under) == []
    over = request("-k-" * occurrences + "." * (room - 3 * occurrences), {"-k-": VALUE})
    assert [f for f, _ in check(over)] == ["personalizations.0.substitutions"]


def test_keys_in_the_subject_and_headers_count_and_shrinking_keys_do_not() -> None:
    body = request("body", {"-k-": VALUE, "-long-key-": ""}, subject="-k-" * 3_200)
    assert [f for f, _ in check(body)] == ["personalizations.0.substitutions"]
    body = request("body", {"-k-": VALUE}, subject="s")
    body["headers"] = {"X-A": "-k-" * 3_200}
    assert [f for f, _ in check(body)] == ["personalizations.0.substitutions"]
    assert check(request("-long-key-" * 100_000, {"-long-key-": ""})) == []


def test_many_distinct_keys_fall_back_to_the_coarse_bound() -> None:
    """Past the work budget the bound is coarse (refusing a little early), never slow."""
    subs = {f"k{i:04}": "y" * 8 for i in range(1_000)}  # 1,000 keys, growing 3 each
    body = MailBody(content=[Content("text/plain", "." * 40_000_000)])
    bound = SizeBound(body)
    coarse = 40_000_000 + 40_000_000 // 5 * 3
    assert bound.size(Personalization(substitutions=subs)) == coarse  # 4e10 chars: not counted
    small = SizeBound(MailBody(content=[Content("text/plain", "k0001" * 2_000_000)]))
    assert small.size(Personalization(substitutions={"k0001": "y" * 100})) == (
        10_000_000 + 2_000_000 * 95  # counted: one key, within the budget
    )


def test_rendering_refuses_a_message_past_the_render_limit() -> None:
    """A message that accept would refuse, stored anyway: refused before it is built."""
    body = MailBody(
        from_=EmailAddress("alice@example.com"),
        content=[Content("text/plain", "-k-" * 100_000)],
    )
    pers = Personalization(to=[EmailAddress("b@example.com")], substitutions={"-k-": VALUE})
    with pytest.raises(RenderError, match=r"could grow to 999,000,000 octets .*limit 62,914,560"):
        render(body, pers, message_id="m@x", date=NOW)
    assert RENDER_LIMIT == 2 * MAX_MESSAGE_BYTES


def test_rendering_a_message_just_under_the_accept_limit_works() -> None:
    content = "-k-" * 1_000 + "." * 1_000
    body = MailBody(
        from_=EmailAddress("alice@example.com"), content=[Content("text/plain", content)]
    )
    pers = Personalization(to=[EmailAddress("b@example.com")], substitutions={"-k-": VALUE})
    msg = render(body, pers, message_id="m@x", date=NOW)
    assert len(msg.data) > 1_000 * len(VALUE)


# -- the bound is a bound ----------------------------------------------------------------

pieces = st.sampled_from(["a", "ab", "é", "😀", "-k-", "k", " ", "="])
texts = st.lists(pieces, max_size=40).map("".join)


@given(
    subject=texts,
    contents=st.lists(texts, max_size=3),
    headers=st.dictionaries(st.sampled_from(["X-A", "X-B"]), texts, max_size=2),
    subs=st.dictionaries(texts, texts, max_size=4),
)
def test_the_bound_is_never_below_the_substituted_size(
    subject: str, contents: list[str], headers: dict[str, str], subs: dict[str, str]
) -> None:
    body = MailBody(subject=subject, content=[Content("text/plain", c) for c in contents])
    pers = Personalization(headers=headers or None, substitutions=subs)
    keys = sorted((k for k in subs if k), key=len, reverse=True)
    if keys:  # the substitution render.py makes
        pattern = re.compile("|".join(map(re.escape, keys)))
        sub = lambda text: pattern.sub(lambda m: subs[m.group(0)], text)  # noqa: E731
    else:
        sub = lambda text: text  # noqa: E731
    actual = sum(octets(sub(t)) for t in [subject, *contents, *headers.values()] if t)
    assert SizeBound(body).size(pers) >= actual


@given(
    content_len=st.integers(0, 4_000_000),
    subs=st.lists(
        st.dictionaries(st.text(max_size=4), st.text(max_size=40), max_size=3), max_size=5
    ),
    own_subject=st.booleans(),
)
def test_the_one_pass_request_bound_never_passes_what_one_by_one_refuses(
    content_len: int, subs: list[dict[str, str]], own_subject: bool
) -> None:
    body = MailBody(subject="Hi", content=[Content("text/plain", "k" * content_len)])
    people = [Personalization(substitutions=s or None) for s in subs]
    if own_subject and people:
        people[0] = Personalization(subject="own", substitutions=people[0].substitutions)
    bound = SizeBound(body)
    extremes = growth_extremes(people)
    if extremes is not None and bound.fits(extremes):
        assert all(bound.size(p) < MAX_MESSAGE_BYTES for p in people)


def test_the_one_pass_bound_lets_a_typical_request_through_and_sends_a_bomb_one_by_one() -> None:
    body = MailBody(subject="Hi -name-", content=[Content("text/plain", "Hello -name-" * 100)])
    typical = [Personalization(substitutions={"-name-": f"User {i}"}) for i in range(100)]
    assert (extremes := growth_extremes(typical)) is not None and SizeBound(body).fits(extremes)
    bomb = MailBody(subject="Hi", content=[Content("text/plain", "-n-" * 100_000)])
    bomb_extremes = growth_extremes([Personalization(substitutions={"-n-": VALUE})])
    assert bomb_extremes is not None and not SizeBound(bomb).fits(bomb_extremes)
