"""Property tests of the accept stage: validation and expansion."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.accept.address import is_valid_email
from postline.accept.expand import expand
from postline.accept.validate import decode_error, message_size, validate
from postline.model.events import DROPPED, PROCESSED
from postline.model.mail import (
    Asm,
    Attachment,
    Content,
    EmailAddress,
    MailSendRequest,
    MailSettings,
    Personalization,
    decode_request,
)

NOW = 1_700_000_000.0

TOP_LEVEL = frozenset(f.encode_name for f in msgspec.structs.fields(MailSendRequest))

# -- strategies ----------------------------------------------------------------------------

texts = st.text(max_size=12)
# text with at least one CR or LF somewhere
crlf_texts = st.builds(
    lambda a, brk, b: a + brk + b, texts, st.sampled_from(["\r", "\n", "\r\n"]), texts
)
emails = st.one_of(
    st.emails(),
    st.sampled_from(["bob@example.com", "BOB@example.com", "a@b.co", "bad", ""]),
    texts,
)
addresses = st.builds(EmailAddress, email=emails, name=st.none() | texts)
address_lists = st.none() | st.lists(addresses, max_size=4)
small_dicts = st.none() | st.dictionaries(texts, texts, max_size=3)
ints = st.none() | st.integers(min_value=-(2**40), max_value=2**40)

personalizations = st.builds(
    Personalization,
    to=address_lists,
    cc=address_lists,
    bcc=address_lists,
    from_=st.none() | addresses,
    subject=st.none() | texts,
    headers=small_dicts,
    substitutions=small_dicts,
    custom_args=small_dicts,
    send_at=ints,
)

requests = st.builds(
    MailSendRequest,
    personalizations=st.none() | st.lists(personalizations, max_size=4),
    from_=st.none() | addresses,
    reply_to=st.none() | addresses,
    reply_to_list=address_lists,
    subject=st.none() | texts,
    content=st.none() | st.lists(st.builds(Content, type=texts, value=texts), max_size=3),
    attachments=st.none()
    | st.lists(
        st.builds(
            Attachment,
            content=texts | st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
            filename=texts,
            type=st.none() | texts,
            disposition=st.none() | st.sampled_from(["inline", "attachment", "x", ""]),
            content_id=st.none() | texts,
        ),
        max_size=2,
    ),
    template_id=st.none() | texts,
    headers=small_dicts,
    categories=st.none() | st.lists(texts, max_size=12),
    custom_args=small_dicts,
    send_at=ints,
    batch_id=st.none() | texts,
    asm=st.none()
    | st.builds(Asm, group_id=st.integers(), groups_to_display=st.none() | st.lists(st.integers())),
    ip_pool_name=st.none() | texts,
    mail_settings=st.none() | st.just(MailSettings()),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
request_keys = st.sampled_from(
    [
        "personalizations",
        "from",
        "reply_to",
        "subject",
        "content",
        "attachments",
        "headers",
        "categories",
        "custom_args",
        "send_at",
        "asm",
        "mail_settings",
    ]
)


def good_request() -> dict[str, Any]:
    return {
        "personalizations": [
            {"to": [{"email": "bob@example.com", "name": "Bob"}], "headers": {"X-A": "1"}},
        ],
        "from": {"email": "alice@example.com"},
        "reply_to": {"email": "reply@example.com"},
        "subject": "Hello",
        "headers": {"X-B": "2"},
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


# where a CR/LF string is put, and the field that must then be reported
INJECTIONS: dict[str, Any] = {
    "subject": (lambda b, s: b.update(subject=s)),
    "personalizations.0.subject": (lambda b, s: b["personalizations"][0].update(subject=s)),
    "headers.X-B": (lambda b, s: b["headers"].update({"X-B": s})),
    "personalizations.0.headers.X-A": (
        lambda b, s: b["personalizations"][0]["headers"].update({"X-A": s})
    ),
    "from.name": (lambda b, s: b["from"].update(name=s)),
    "reply_to.name": (lambda b, s: b["reply_to"].update(name=s)),
    "personalizations.0.to.0.name": (lambda b, s: b["personalizations"][0]["to"][0].update(name=s)),
    "personalizations.0.cc.0.name": (
        lambda b, s: b["personalizations"][0].update(cc=[{"email": "c@example.com", "name": s}])
    ),
    "personalizations.0.bcc.0.name": (
        lambda b, s: b["personalizations"][0].update(bcc=[{"email": "d@example.com", "name": s}])
    ),
    "personalizations.0.from.name": (
        lambda b, s: b["personalizations"][0].update(
            {"from": {"email": "e@example.com", "name": s}}
        )
    ),
}


def decode(body: dict[str, Any]) -> MailSendRequest:
    return decode_request(json.dumps(body).encode())


# -- validate --------------------------------------------------------------------------------


def test_the_base_request_is_valid() -> None:
    assert validate(decode(good_request()), NOW) == []


@given(where=st.sampled_from(sorted(INJECTIONS)), value=crlf_texts)
def test_crlf_in_subject_header_value_or_name_is_refused(where: str, value: str) -> None:
    body = good_request()
    INJECTIONS[where](body, value)
    fields = [e.field for e in validate(decode(body), NOW)]
    assert where in fields


@given(key=crlf_texts, global_=st.booleans())
def test_crlf_in_header_name_is_refused(key: str, global_: bool) -> None:
    body = good_request()
    headers = body["headers"] if global_ else body["personalizations"][0]["headers"]
    headers[key] = "v"
    assert validate(decode(body), NOW)


@given(requests)
@settings(max_examples=300)
def test_validate_never_raises(req: MailSendRequest) -> None:
    errors = validate(req, NOW)
    for err in errors:
        assert err.message
        # header names are part of some paths and may contain dots themselves
        assert err.field is None or err.field.split(".", 1)[0] in TOP_LEVEL
    assert message_size(req) >= 0


@given(st.dictionaries(request_keys, json_values, max_size=5))
def test_arbitrary_json_is_either_decoded_and_validated_or_reported(body: dict[str, Any]) -> None:
    try:
        req = decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        err = decode_error(exc)
        assert err.message
        assert err.field is None or "$" not in err.field
    else:
        validate(req, NOW)
        message_size(req)


@given(st.binary(max_size=40))
def test_decode_error_handles_arbitrary_bytes(raw: bytes) -> None:
    try:
        decode_request(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        assert decode_error(exc).message
    except UnicodeDecodeError:
        pass  # the HTTP layer answers 415 for invalid UTF-8


@given(st.text(max_size=300))
def test_is_valid_email_never_raises(text: str) -> None:
    if is_valid_email(text):
        assert "@" in text
        assert not any(c in text for c in " \r\n\t")


@given(st.emails())
def test_generated_addresses_are_valid(email: str) -> None:
    assert is_valid_email(email)


@given(st.lists(st.binary(max_size=200), max_size=3))
def test_message_size_counts_decoded_attachment_bytes(blobs: list[bytes]) -> None:
    atts = [Attachment(base64.encodebytes(b).decode(), "f") for b in blobs]
    req = MailSendRequest(attachments=atts, content=[Content("text/plain", "hé")])
    assert message_size(req) == sum(map(len, blobs)) + 3


# -- expand ----------------------------------------------------------------------------------

expand_personalizations = st.lists(
    st.builds(
        Personalization,
        to=st.lists(addresses, min_size=1, max_size=4),
        cc=address_lists,
        bcc=address_lists,
        custom_args=small_dicts,
        send_at=ints,
    ),
    min_size=1,
    max_size=5,
)


@given(
    items=expand_personalizations,
    blocked=st.sets(emails.map(str.lower), max_size=4),
    categories=st.none() | st.lists(texts, max_size=3),
)
def test_expand_one_event_per_unique_recipient(
    items: list[Personalization], blocked: set[str], categories: list[str] | None
) -> None:
    req = MailSendRequest(personalizations=items, categories=categories)

    def suppressed(found: list[str]) -> dict[str, str]:
        return {e: "Bounced Address" for e in found if e.lower() in blocked}

    batch = expand(
        req,
        tenant="t",
        node="n",
        host="h",
        now=NOW,
        max_age=60.0,
        x_message_id="X",
        suppressed=suppressed,
    )
    messages = {m.sg_message_id: m for m in batch.messages}
    for i, p in enumerate(items):
        sg_id = f"X.n.{i}"
        unique = {a.email.lower() for a in (p.to or []) + (p.cc or []) + (p.bcc or [])}
        evs = [e for e in batch.events if e.sg_message_id == sg_id]
        assert len(evs) == len(unique)
        assert {e.email.lower() for e in evs} == unique
        kept = {e.email.lower() for e in evs if e.event == PROCESSED}
        dropped = {e.email.lower() for e in evs if e.event == DROPPED}
        assert kept | dropped == unique
        assert dropped == unique & blocked
        if kept:
            rcpts = messages[sg_id].recipients
            assert len(rcpts) == len(kept)
            assert {r.lower() for r in rcpts} == kept
            assert messages[sg_id].due_at >= NOW
        else:
            assert sg_id not in messages
