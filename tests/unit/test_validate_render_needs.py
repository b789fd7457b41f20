"""Accept checks what rendering and storing need (issue 10): one test per rule."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from postline.accept import validate_fields as vf
from postline.accept.unsupported import TEMPLATE_DATA
from postline.accept.validate import decode_error, validate
from postline.model.errors import FieldError
from postline.model.mail import NestedTooDeep, decode_request

NOW = 1_700_000_000.0


def mail(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.com"}]}],
        "from": {"email": "alice@example.com"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi Bob"}],
    }
    body.update(extra)
    return body


def errors(body: dict[str, Any]) -> list[FieldError]:
    return validate(decode_request(json.dumps(body).encode()), NOW)


def fields(body: dict[str, Any]) -> list[str | None]:
    return [e.field for e in errors(body)]


def att(**extra: Any) -> dict[str, Any]:
    a = {"content": base64.b64encode(b"png").decode(), "filename": "logo.png"}
    return {**a, **extra}


@pytest.mark.parametrize(
    "cid", ["logo-é", "logo\u2028", "lo go", "<logo>", "a\x00b", "x" * 901, "logo\r\n"]
)
def test_a_content_id_must_fit_a_content_id_header(cid: str) -> None:
    errs = errors(mail(attachments=[att(content_id=cid, disposition="inline")]))
    assert [e.field for e in errs] == ["attachments.0.content_id"]
    assert errs[0].message == vf.CONTENT_ID_CHARS


@pytest.mark.parametrize("cid", ["logo", "part1.06090408@example.com", "x" * 900, "a=b?c~", ""])
def test_printable_content_ids_are_accepted(cid: str) -> None:
    assert errors(mail(attachments=[att(content_id=cid, disposition="inline")])) == []


@pytest.mark.parametrize("kind", ["plain", "text", "text/", "/html", "texte/é", " /x"])
def test_a_content_type_must_be_a_mime_type(kind: str) -> None:
    body = mail(content=[{"type": "text/plain", "value": "a"}, {"type": kind, "value": "b"}])
    errs = errors(body)
    assert [(e.field, e.message) for e in errs] == [("content.1.type", vf.CONTENT_TYPE_MIME)]


@pytest.mark.parametrize("kind", ["image/png", "Image/PNG", "text/calendar; method=REQUEST"])
def test_attachment_mime_types_are_accepted(kind: str) -> None:
    assert errors(mail(attachments=[att(type=kind)])) == []


@pytest.mark.parametrize("kind", ["png", "image/pngé", "; name=x"])
def test_an_attachment_type_must_be_a_mime_type(kind: str) -> None:
    errs = errors(mail(attachments=[att(type=kind)]))
    assert [(e.field, e.message) for e in errs] == [("attachments.0.type", vf.ATTACHMENT_MIME)]


def test_a_header_name_must_fit_a_header_line() -> None:
    assert errors(mail(headers={"X-" + "a" * 74: "v"})) == []
    (err,) = errors(mail(headers={"X-" + "a" * 75: "v"}))
    assert err.field == "headers" and "1 to 76 printable ASCII" in err.message


@pytest.mark.parametrize("send_at", [-1, -(10**30)])
@pytest.mark.parametrize("where", ["top", "personalization"])
def test_a_negative_send_at_is_refused(send_at: int, where: str) -> None:
    if where == "top":
        body, field = mail(send_at=send_at), "send_at"
    else:
        body = mail(personalizations=[{"to": [{"email": "b@example.com"}], "send_at": send_at}])
        field = "personalizations.0.send_at"
    assert [(e.field, e.message) for e in errors(body)] == [(field, vf.SEND_AT_NEGATIVE)]


@pytest.mark.parametrize("send_at", [10**30, 2**63, 2**64])
def test_a_far_send_at_is_refused(send_at: int) -> None:
    assert fields(mail(send_at=send_at)) == ["send_at"]


# dynamic_template_data is refused as unsupported too (issue 12): its own rules are
# reported beside that error. asm is served (api/asm_groups.py): its rules alone.


@pytest.mark.parametrize("group", [-5, -1, 2**63, 2**64, 10**30])
def test_asm_group_ids_must_be_storable(group: int) -> None:
    assert fields(mail(asm={"group_id": group})) == ["asm.group_id"]
    body = mail(asm={"group_id": 1, "groups_to_display": [1, group]})
    assert fields(body) == ["asm.groups_to_display.1"]


def test_template_data_nesting_is_bounded() -> None:
    def nested(levels: int) -> Any:
        """dynamic_template_data with ``levels`` of containers, itself the first."""
        value: Any = 1
        for _ in range(levels - 1):
            value = [value]
        return {"a": value}

    field = "personalizations.0.dynamic_template_data"
    ok = [{"to": [{"email": "b@example.com"}], "dynamic_template_data": nested(32)}]
    assert [(e.field, e.message) for e in errors(mail(personalizations=ok))] == [
        (field, TEMPLATE_DATA)
    ]
    deep = [{"to": [{"email": "b@example.com"}], "dynamic_template_data": nested(33)}]
    errs = errors(mail(personalizations=deep))
    assert [(e.field, e.message) for e in errs] == [
        (field, vf.TEMPLATE_DATA_DEPTH),
        (field, TEMPLATE_DATA),
    ]


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40])
def test_template_data_integers_must_be_storable(number: int) -> None:
    p = [{"to": [{"email": "b@example.com"}], "dynamic_template_data": {"a": {"b": [number]}}}]
    assert fields(mail(personalizations=p)) == ["personalizations.0.dynamic_template_data"] * 2


@pytest.mark.parametrize("where", ["unknown", "template_data", "top"])
def test_json_nested_too_deeply_is_a_decode_error(where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    raw = {
        "unknown": '{"x": DEEP}',
        "template_data": '{"personalizations": [{"dynamic_template_data": {"a": DEEP}}]}',
        "top": '{"subject": "a", "x": {"y": DEEP}}',
    }[where].replace("DEEP", deep)
    with pytest.raises(NestedTooDeep) as info:
        decode_request(raw.encode())
    err = decode_error(info.value)
    assert err.message.startswith("Bad Request: arrays and objects are nested too deeply")
