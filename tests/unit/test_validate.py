"""Unit tests of :mod:`postline.accept.validate`: one bad request per rule, plus good ones."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from postline.accept import validate as v
from postline.accept import validate_fields as vf
from postline.accept.address import is_valid_email
from postline.accept.validate import (
    MAX_MESSAGE_BYTES,
    decode_error,
    message_size,
    validate,
)
from postline.model.errors import FieldError
from postline.model.mail import decode_request

NOW = 1_700_000_000.0
HOUR = 3600


def mail(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "bob@example.com", "name": "Bob"}]}],
        "from": {"email": "alice@example.com", "name": "Alice"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi Bob"}],
    }
    body.update(extra)
    return body


def pers(**extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"to": [{"email": "bob@example.com"}]}
    p.update(extra)
    return p


def errors(body: dict[str, Any], now: float = NOW) -> list[FieldError]:
    return validate(decode_request(json.dumps(body).encode()), now)


def fields(body: dict[str, Any]) -> list[str | None]:
    return [e.field for e in errors(body)]


def only(body: dict[str, Any]) -> FieldError:
    errs = errors(body)
    assert len(errs) == 1, errs
    return errs[0]


def assert_only(body: dict[str, Any], field: str | None, message: str) -> None:
    err = only(body)
    assert (err.field, err.message) == (field, message)


# -- good requests ---------------------------------------------------------------------------


def test_minimal_request_is_valid() -> None:
    assert errors(mail()) == []


def test_full_request_is_valid() -> None:
    body = mail(
        personalizations=[
            pers(
                to=[{"email": "Bob@Example.com", "name": "Bob"}],
                cc=[{"email": "carol@example.com", "name": "Carol"}],
                bcc=[{"email": "dave@example.org"}],
                subject="Hi Bob",
                headers={"X-Campaign": "spring"},
                substitutions={"-name-": "Bob"},
                custom_args={"user": "1"},
                send_at=int(NOW) + HOUR,
                **{"from": {"email": "sales@example.com", "name": "Sales, Inc."}},
            ),
            pers(to=[{"email": "bob@example.com"}], dynamic_template_data={}),
        ],
        reply_to={"email": "reply@example.com", "name": "Replies"},
        content=[
            {"type": "text/plain", "value": "plain"},
            {"type": "text/x-amp-html", "value": "<amp/>"},
            {"type": "text/html", "value": "<p>html</p>"},
            {"type": "text/calendar", "value": "BEGIN:VCALENDAR"},
        ],
        attachments=[
            {
                "content": base64.b64encode(b"a;b").decode(),
                "filename": "a.csv",
                "type": "text/csv; charset=windows-1252",
            },
            {
                "content": base64.encodebytes(b"x" * 200).decode(),
                "filename": "logo.png",
                "type": "image/png",
                "disposition": "inline",
                "content_id": "logo",
            },
        ],
        headers={
            "X-Mailer": "tests",
            "List-Unsubscribe": "<mailto:u@example.com>",
            "Message-ID": "<thread-1@app.example.com>",
            "Date": "Tue, 02 Jan 2024 03:04:05 +0100",
        },
        categories=["news", "spring"],
        custom_args={"campaign": "c1"},
        send_at=int(NOW) - 10 * HOUR,
        mail_settings={
            "sandbox_mode": {"enable": False},
            "bypass_spam_management": {"enable": False},
            "footer": {"enable": False, "text": "unused"},
        },
        tracking_settings={
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
            "subscription_tracking": {"enable": False},
            "ganalytics": {"enable": False},
        },
    )
    assert errors(body) == []


# -- personalizations ----------------------------------------------------------------------


def test_personalizations_required() -> None:
    body = mail()
    del body["personalizations"]
    assert_only(body, "personalizations", v.PERSONALIZATIONS_REQUIRED)


def test_personalizations_not_empty() -> None:
    assert_only(mail(personalizations=[]), "personalizations", v.NO_PERSONALIZATION)


def test_at_most_1000_personalizations() -> None:
    many = [pers(to=[{"email": f"u{i}@example.com"}]) for i in range(1001)]
    err = only(mail(personalizations=many))
    assert err.field == "personalizations"
    assert err.message.startswith("The personalization block is limited to 1000")
    assert "You have provided 1001 personalizations." in err.message


def test_1000_personalizations_are_fine() -> None:
    many = [pers(to=[{"email": f"u{i}@example.com"}]) for i in range(1000)]
    assert errors(mail(personalizations=many)) == []


def test_at_most_1000_recipients_per_request() -> None:
    first = pers(to=[{"email": f"t{i}@example.com"} for i in range(500)])
    second = pers(
        to=[{"email": "x@example.com"}],
        cc=[{"email": f"c{i}@example.com"} for i in range(250)],
        bcc=[{"email": f"b{i}@example.com"} for i in range(250)],
    )
    assert_only(mail(personalizations=[first, second]), "personalizations", v.TOO_MANY_RECIPIENTS)
    second["bcc"].pop()
    assert errors(mail(personalizations=[first, second])) == []


@pytest.mark.parametrize("p", [{}, {"to": []}, {"to": None, "cc": [{"email": "c@example.com"}]}])
def test_to_required_in_every_personalization(p: dict[str, Any]) -> None:
    body = mail(personalizations=[pers(), p])
    assert_only(body, "personalizations.1.to", v.TO_REQUIRED)


def test_duplicate_address_across_to_cc_is_refused_case_insensitively() -> None:
    p = pers(to=[{"email": "bob@example.com"}], cc=[{"email": "BOB@example.COM"}])
    err = only(mail(personalizations=[pers(), p]))
    assert err.field == "personalizations.1"
    assert err.message == (
        "Each email address in the personalization block should be unique between to, cc, "
        "and bcc. We found the first duplicate instance of [BOB@example.COM] in the "
        "personalizations.1.cc field."
    )


def test_duplicate_within_to_and_bcc_reports_the_first_only() -> None:
    p = pers(
        to=[{"email": "a@example.com"}, {"email": "a@example.com"}],
        bcc=[{"email": "b@example.com"}, {"email": "B@example.com"}],
    )
    err = only(mail(personalizations=[p]))
    assert "[a@example.com] in the personalizations.0.to field" in err.message


def test_same_address_in_two_personalizations_is_fine() -> None:
    assert errors(mail(personalizations=[pers(), pers()])) == []


BAD_EMAILS = [
    "",
    "plain",
    "@example.com",
    "bob@",
    "bob@localhost",
    "bob@@example.com",
    "bob smith@example.com",
    "bob@exa mple.com",
    " bob@example.com",
    "bob@example.com\r\nBcc: x@evil.com",
    "bob\n@example.com",
    "bob@-example.com",
    "bob@example-.com",
    "bob@exa_mple.com",
    "bob@example.com.",
    ".bob@example.com",
    "bob.@example.com",
    "bo..b@example.com",
    "bob@example..com",
    "bob@[127.0.0.1]",
    '"bob"@example.com',
    "b(o)b@example.com",
    "x" * 65 + "@example.com",
    "bob@" + "a" * 64 + ".com",
    "bob@" + ".".join(["a" * 60] * 5) + ".com",
    "bob\u00a0@example.com",
    "bob\x00@example.com",
    "bob@exam\u2028ple.com",
    "bob@\u2603\u2603..com",
]

GOOD_EMAILS = [
    "a@b.co",
    "first.last+tag@sub.example.co.uk",
    "o'reilly@example.com",
    "user_name-1@example-domain.org",
    "{weird}!#$%&*=?^`|~@example.com",
    "x" * 64 + "@example.com",
    "josé@exämple.com",
    "用户@例子.广告",
    "пользователь@пример.рф",
    "bob@xn--bcher-kva.example",
    "bob@123.example",
]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_invalid_recipient_address(email: str) -> None:
    body = mail(personalizations=[pers(cc=[{"email": "ok@example.com"}, {"email": email}])])
    assert_only(body, "personalizations.0.cc.1.email", vf.INVALID_RECIPIENT)
    assert not is_valid_email(email)


@pytest.mark.parametrize("email", GOOD_EMAILS)
def test_valid_addresses(email: str) -> None:
    assert is_valid_email(email)
    assert errors(mail(personalizations=[pers(to=[{"email": email}])])) == []


def test_address_length_limit() -> None:
    local = "x" * 64
    domain = ".".join(["d" * 61] * 3) + ".com"  # 64 + 1 + 189 = 254
    assert is_valid_email(f"{local}@{domain}")
    assert not is_valid_email(f"{local}@{domain}m")


def test_personalization_from_is_checked() -> None:
    body = mail(personalizations=[pers(**{"from": {"email": "nope"}})])
    assert_only(
        body, "personalizations.0.from.email", "The from email does not contain a valid address."
    )


# -- from / reply_to ---------------------------------------------------------------------------


def test_from_required() -> None:
    body = mail()
    del body["from"]
    assert_only(body, "from", v.FROM_REQUIRED)


def test_from_email_valid() -> None:
    body = mail(**{"from": {"email": "alice at example.com"}})
    assert_only(body, "from.email", "The from email does not contain a valid address.")


def test_reply_to_email_valid() -> None:
    body = mail(reply_to={"email": "nope"})
    assert_only(body, "reply_to.email", "The reply_to email does not contain a valid address.")


def test_reply_to_and_reply_to_list_are_exclusive() -> None:
    body = mail(reply_to={"email": "r@example.com"}, reply_to_list=[{"email": "s@example.com"}])
    assert_only(body, "reply_to_list", v.REPLY_TO_BOTH)


def test_reply_to_list_at_most_1000() -> None:
    body = mail(reply_to_list=[{"email": f"r{i}@example.com"} for i in range(1001)])
    assert_only(body, "reply_to_list", "The reply_to_list may not have more than 1000 items.")


def test_reply_to_list_unique_and_valid() -> None:
    body = mail(
        reply_to_list=[
            {"email": "r@example.com"},
            {"email": "bad"},
            {"email": "R@EXAMPLE.com"},
        ]
    )
    assert [(e.field, e.message) for e in errors(body)] == [
        ("reply_to_list.1.email", "The reply_to_list email does not contain a valid address."),
        ("reply_to_list.2.email", "Each email address in the reply_to_list should be unique."),
    ]


# -- subject ---------------------------------------------------------------------------------


def test_subject_required() -> None:
    body = mail()
    del body["subject"]
    assert_only(body, "subject", v.SUBJECT_REQUIRED)


def test_empty_subject_counts_as_missing() -> None:
    assert_only(mail(subject=""), "subject", v.SUBJECT_REQUIRED)


def test_subject_not_required_with_template() -> None:
    body = mail(template_id="d-123")
    del body["subject"]
    assert fields(body) == ["template_id"]  # templates are refused, but alone (issue 12)


def test_subject_not_required_when_every_personalization_has_one() -> None:
    body = mail(personalizations=[pers(subject="A"), pers(subject="B")])
    del body["subject"]
    assert errors(body) == []
    body["personalizations"].append(pers())
    assert_only(body, "subject", v.SUBJECT_REQUIRED)


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: evil@example.com", "Hi\n", "\rHi"])
def test_subject_without_crlf(subject: str) -> None:
    msg = "The subject cannot contain CR or LF characters."
    assert_only(mail(subject=subject), "subject", msg)
    body = mail(personalizations=[pers(), pers(subject=subject)])
    assert_only(body, "personalizations.1.subject", msg)


# -- content ---------------------------------------------------------------------------------


def test_content_required() -> None:
    body = mail()
    del body["content"]
    assert_only(body, "content", vf.CONTENT_REQUIRED)
    assert_only(mail(content=[]), "content", vf.CONTENT_REQUIRED)


def test_content_not_required_with_template() -> None:
    body = mail(template_id="d-abc")
    del body["content"]
    assert fields(body) == ["template_id"]


def test_content_type_and_value_not_empty() -> None:
    body = mail(content=[{"type": "", "value": ""}])
    assert [(e.field, e.message) for e in errors(body)] == [
        ("content.0.type", "The content type must be a string at least one character in length."),
        (
            "content.0.value",
            "The content value must be a string at least one character in length.",
        ),
    ]


@pytest.mark.parametrize("ctype", ["text/plain; charset=utf-8", "text/plain\r\n", "text/\nhtml"])
def test_content_type_without_semicolon_or_crlf(ctype: str) -> None:
    body = mail(content=[{"type": ctype, "value": "x"}])
    assert_only(body, "content.0.type", "The content type cannot contain ';', or CRLF characters.")


@pytest.mark.parametrize(
    ("types", "bad"),
    [
        (["text/html", "text/plain"], 1),
        (["text/calendar", "text/plain"], 1),
        (["text/plain", "text/calendar", "text/html"], 2),
        (["text/html", "text/plain", "text/plain"], 1),
    ],
)
def test_content_order(types: list[str], bad: int) -> None:
    body = mail(content=[{"type": t, "value": "x"} for t in types])
    err = errors(body)[0]
    assert (err.field, err.message) == (f"content.{bad}.type", vf.CONTENT_ORDER)


@pytest.mark.parametrize(
    "types",
    [
        ["text/html"],
        ["text/calendar"],
        ["text/plain", "text/html", "text/x-amp-html"],
        ["text/plain", "text/x-amp-html", "text/html"],
        ["TEXT/PLAIN", "Text/Html", "application/json"],
    ],
)
def test_content_order_accepted(types: list[str]) -> None:
    assert errors(mail(content=[{"type": t, "value": "x"} for t in types])) == []


# -- display names -----------------------------------------------------------------------------

CRLF_NAME = "The name cannot contain CR or LF characters."
SEP_NAME = "The name cannot contain ';' or ',' characters."


@pytest.mark.parametrize("name", ["Eve\r\nBcc: x@example.com", "Eve\n", "\rEve"])
def test_display_names_without_crlf(name: str) -> None:
    assert_only(mail(**{"from": {"email": "a@example.com", "name": name}}), "from.name", CRLF_NAME)
    assert_only(mail(reply_to={"email": "r@example.com", "name": name}), "reply_to.name", CRLF_NAME)
    body = mail(reply_to_list=[{"email": "r@example.com", "name": name}])
    assert_only(body, "reply_to_list.0.name", CRLF_NAME)
    for kind in ("to", "cc", "bcc"):
        p = pers(**{kind: [{"email": "eve@example.com", "name": name}]})
        if kind != "to":
            p["to"] = [{"email": "bob@example.com"}]
        assert_only(mail(personalizations=[p]), f"personalizations.0.{kind}.0.name", CRLF_NAME)
    p = pers(**{"from": {"email": "s@example.com", "name": name}})
    assert_only(mail(personalizations=[p]), "personalizations.0.from.name", CRLF_NAME)


@pytest.mark.parametrize("name", ["Smith, John", "a;b"])
def test_recipient_names_without_separators(name: str) -> None:
    p = pers(bcc=[{"email": "x@example.com", "name": name}])
    assert_only(mail(personalizations=[p]), "personalizations.0.bcc.0.name", SEP_NAME)
    # the sender's name may contain them
    assert errors(mail(**{"from": {"email": "a@example.com", "name": name}})) == []


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["X Header", "X:Header", "X-Ünïcode", "", "X-\r\nBcc", "X-\t"])
def test_header_names_printable_ascii_without_space_or_colon(key: str) -> None:
    for body, path in (
        (mail(headers={key: "v"}), "headers"),
        (mail(personalizations=[pers(headers={key: "v"})]), "personalizations.0.headers"),
    ):
        err = only(body)
        assert err.field == path
        assert err.message.startswith(f"Invalid header name {key!r}")


@pytest.mark.parametrize("value", ["a\r\nBcc: evil@example.com", "a\nb", "a\r"])
def test_header_values_without_crlf(value: str) -> None:
    msg = "Header values cannot contain CR or LF characters."
    assert_only(mail(headers={"X-A": value}), "headers.X-A", msg)
    body = mail(personalizations=[pers(headers={"X-A": value})])
    assert_only(body, "personalizations.0.headers.X-A", msg)


@pytest.mark.parametrize(
    "key",
    [
        "x-sg-id",
        "X-SG-EID",
        "Received",
        "DKIM-Signature",
        "content-type",
        "Content-Transfer-Encoding",
        "TO",
        "From",
        "subject",
        "reply-to",
        "Cc",
        "bcc",
    ],
)
def test_reserved_headers_refused(key: str) -> None:
    for body, path in (
        (mail(headers={key: "v"}), "headers"),
        (mail(personalizations=[pers(headers={key: "v"})]), "personalizations.0.headers"),
    ):
        err = only(body)
        assert err.field == f"{path}.{key}"
        assert err.message == f"The header {key} is reserved. You may not overwrite: " + (
            vf.RESERVED_HEADERS + "."
        )


def test_duplicate_header_names_refused() -> None:
    err = only(mail(headers={"X-A": "1", "x-a": "2"}))
    assert (err.field, err.message) == ("headers.x-a", "The header x-a is set more than once.")


# -- categories ------------------------------------------------------------------------------


def test_categories_at_most_10() -> None:
    body = mail(categories=[f"c{i}" for i in range(11)])
    assert_only(body, "categories", "The categories parameter may not have more than 10 items.")
    assert errors(mail(categories=[f"c{i}" for i in range(10)])) == []


def test_categories_unique() -> None:
    body = mail(categories=["a", "b", "a"])
    assert_only(body, "categories", "The categories parameter must contain unique items.")


def test_category_length() -> None:
    assert errors(mail(categories=["x" * 255])) == []
    body = mail(categories=["ok", "x" * 256])
    assert_only(body, "categories.1", "A category cannot exceed 255 characters.")


@pytest.mark.parametrize("category", ["café", "a\r\nb", "tab\there", "\u2603"])
def test_category_ascii(category: str) -> None:
    body = mail(categories=[category])
    assert_only(body, "categories.0", "A category may contain only printable ASCII characters.")


# -- custom_args and substitutions -----------------------------------------------------------


def _args_of_size(size: int, key: str = "k") -> dict[str, str]:
    """A one-entry object whose JSON encoding is exactly ``size`` bytes."""
    overhead = len(json.dumps({key: ""}, separators=(",", ":")))
    return {key: "v" * (size - overhead)}


def test_global_custom_args_size() -> None:
    assert errors(mail(custom_args=_args_of_size(10_000))) == []
    err = only(mail(custom_args=_args_of_size(10_001)))
    assert err.field == "custom_args"
    assert err.message == (
        "The custom_args may not exceed 10,000 bytes (JSON-encoded); got 10,001 bytes."
    )


def test_merged_custom_args_size_per_personalization() -> None:
    body = mail(
        custom_args=_args_of_size(6000, "global"),
        personalizations=[
            pers(custom_args={"small": "1"}),
            pers(custom_args=_args_of_size(5000, "own")),
            pers(custom_args=_args_of_size(9000, "global")),  # overrides the global key
        ],
    )
    err = only(body)
    assert err.field == "personalizations.1.custom_args"
    assert err.message.startswith(
        "The custom_args (merged with the global custom_args) may not exceed 10,000 bytes"
    )


def test_personalization_custom_args_size_without_global() -> None:
    body = mail(personalizations=[pers(custom_args=_args_of_size(10_001))])
    assert only(body).field == "personalizations.0.custom_args"


def test_substitutions_size() -> None:
    body = mail(personalizations=[pers(substitutions=_args_of_size(10_000))])
    assert errors(body) == []
    body = mail(personalizations=[pers(substitutions=_args_of_size(10_001))])
    err = only(body)
    assert err.field == "personalizations.0.substitutions"
    assert err.message.startswith("The substitutions may not exceed 10,000 bytes")


# -- send_at ---------------------------------------------------------------------------------


def test_send_at_at_most_72_hours_ahead() -> None:
    limit = int(NOW) + 72 * HOUR
    assert errors(mail(send_at=limit)) == []
    assert_only(mail(send_at=limit + 1), "send_at", vf.SCHEDULE_TOO_FAR)
    body = mail(personalizations=[pers(), pers(send_at=limit + 1)])
    assert_only(body, "personalizations.1.send_at", vf.SCHEDULE_TOO_FAR)


def test_send_at_in_the_past_is_fine() -> None:
    assert errors(mail(send_at=0, personalizations=[pers(send_at=int(NOW) - 86400)])) == []


# -- attachments -----------------------------------------------------------------------------


def att(**extra: Any) -> dict[str, Any]:
    a: dict[str, Any] = {"content": "aGVsbG8=", "filename": "hello.txt"}
    a.update(extra)
    return a


def test_attachment_content_required() -> None:
    body = mail(attachments=[att(), att(content="")])
    assert_only(body, "attachments.1.content", "The attachment content is required.")


@pytest.mark.parametrize("content", ["not base64!", "aGVsbG8", "aGVs*G8=", "aGVsbG8==", "éé=="])
def test_attachment_content_base64(content: str) -> None:
    body = mail(attachments=[att(content=content)])
    assert_only(body, "attachments.0.content", "The attachment content must be base64 encoded.")


def test_attachment_content_with_line_breaks_is_fine() -> None:
    content = base64.encodebytes(b"\x00\xff" * 500).decode().replace("\n", "\r\n")
    assert errors(mail(attachments=[att(content=content)])) == []


def test_attachment_filename_required() -> None:
    body = mail(attachments=[att(filename="")])
    assert_only(body, "attachments.0.filename", "The attachment filename parameter is required.")
    raw = json.dumps(mail(attachments=[{"content": "aGVsbG8="}])).encode()
    with pytest.raises(msgspec.ValidationError) as exc:
        decode_request(raw)
    err = decode_error(exc.value)
    assert (err.field, err.message) == (
        "attachments.0.filename",
        "The filename parameter is required.",
    )


@pytest.mark.parametrize("name", ["a;b.txt", "a,b.txt", "a\r\nb.txt", "a\n.txt"])
def test_attachment_filename_characters(name: str) -> None:
    body = mail(attachments=[att(filename=name)])
    assert_only(
        body,
        "attachments.0.filename",
        "The attachment filename cannot contain ';', ',', or CRLF characters.",
    )


@pytest.mark.parametrize("disposition", ["", "Inline", "attached", "form-data"])
def test_attachment_disposition(disposition: str) -> None:
    body = mail(attachments=[att(disposition=disposition)])
    assert_only(
        body,
        "attachments.0.disposition",
        'The disposition of your attachment can be either "inline" or "attachment".',
    )


def test_inline_attachment_without_content_id_is_accepted() -> None:
    assert errors(mail(attachments=[att(disposition="inline")])) == []


def test_attachment_type_and_content_id_without_crlf() -> None:
    body = mail(attachments=[att(type="text/plain\r\nX: y", content_id="a\nb")])
    assert [e.field for e in errors(body)] == ["attachments.0.type", "attachments.0.content_id"]
    assert fields(mail(attachments=[att(type="")])) == ["attachments.0.type"]


# -- asm, ip pool, ids, settings -----------------------------------------------------------
# These features do not exist yet: each is also refused as unsupported (accept/unsupported.py,
# tests/unit/test_validate_unsupported.py). Their own rules still hold and are reported with it.


def shape_errors(body: dict[str, Any]) -> list[FieldError]:
    """The errors but the "Postline does not support ... yet" ones."""
    return [e for e in errors(body) if not e.message.startswith("Postline does not support")]


def test_groups_to_display_at_most_25() -> None:
    body = mail(asm={"group_id": 1, "groups_to_display": list(range(26))})
    assert [(e.field, e.message) for e in shape_errors(body)] == [
        (
            "asm.groups_to_display",
            "The groups_to_display parameter may not have more than 25 items.",
        )
    ]


@pytest.mark.parametrize("pool", ["p", "x" * 65])
def test_ip_pool_name_length(pool: str) -> None:
    assert [(e.field, e.message) for e in shape_errors(mail(ip_pool_name=pool))] == [
        ("ip_pool_name", "The ip_pool_name must be between 2 and 64 characters.")
    ]


@pytest.mark.parametrize("pool", ["ab", "x" * 64])
def test_ip_pool_name_length_ok(pool: str) -> None:
    assert shape_errors(mail(ip_pool_name=pool)) == []


@pytest.mark.parametrize("field", ["batch_id", "template_id", "ip_pool_name"])
def test_ids_without_crlf(field: str) -> None:
    assert [(e.field, e.message) for e in shape_errors(mail(**{field: "abc\r\ndef"}))] == [
        (field, f"The {field} cannot contain CR or LF characters.")
    ]


def test_bypass_list_management_is_exclusive() -> None:
    settings = {
        "bypass_list_management": {"enable": True},
        "bypass_bounce_management": {"enable": True},
    }
    (err,) = shape_errors(mail(mail_settings=settings))
    assert err.field == "mail_settings.bypass_list_management"
    settings["bypass_bounce_management"] = {"enable": False}
    assert shape_errors(mail(mail_settings=settings)) == []


def test_bcc_setting_email_and_spam_threshold() -> None:
    settings = {"bcc": {"enable": True, "email": "nope"}, "spam_check": {"threshold": 11}}
    assert [e.field for e in shape_errors(mail(mail_settings=settings))] == [
        "mail_settings.bcc.email",
        "mail_settings.spam_check.threshold",
    ]
    settings = {"bcc": {"enable": False}, "spam_check": {"enable": False, "threshold": 5}}
    assert errors(mail(mail_settings=settings)) == []


# -- all at once -----------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    body = {
        "personalizations": [
            {"to": [{"email": "bad"}], "headers": {"To": "x"}},
            {"cc": [{"email": "c@example.com"}]},
        ],
        "content": [{"type": "text/html", "value": ""}],
        "categories": ["a", "a"],
        "send_at": int(NOW) + 100 * HOUR,
    }
    assert fields(body) == [
        "personalizations.0.to.0.email",
        "personalizations.0.headers.To",
        "personalizations.1.to",
        "from",
        "subject",
        "content.0.value",
        "categories",
        "send_at",
    ]


# -- JSON decoding errors --------------------------------------------------------------------


def decode_failure(raw: bytes) -> FieldError:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as exc:
        decode_request(raw)
    assert isinstance(exc.value, msgspec.ValidationError | msgspec.DecodeError)
    return decode_error(exc.value)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"personalizations": [{"to": "bob@example.com"}]},
            "personalizations.0.to",
            "Invalid type. Expected: array, given: string.",
        ),
        (
            {"personalizations": [{"to": [{"email": 5}]}]},
            "personalizations.0.to.0.email",
            "Invalid type. Expected: string, given: integer.",
        ),
        (
            {"personalizations": [{"to": [{"name": "x"}]}]},
            "personalizations.0.to.0.email",
            "The email parameter is required.",
        ),
        ({"send_at": "tomorrow"}, "send_at", "Invalid type. Expected: integer, given: string."),
        ({"send_at": 1.5}, "send_at", "Invalid type. Expected: integer, given: number."),
        ({"headers": {"X-A": 1}}, "headers", "Invalid type. Expected: string, given: integer."),
        (
            {"personalizations": [{}, {"custom_args": {"a": True}}]},
            "personalizations.1.custom_args",
            "Invalid type. Expected: string, given: boolean.",
        ),
        (
            {"from": {"email": "a@b.co", "name": None}, "asm": {}},
            "asm.group_id",
            "The group_id parameter is required.",
        ),
        ([], None, "Invalid type. Expected: object, given: array."),
    ],
)
def test_decode_error_field_paths(body: Any, field: str | None, message: str) -> None:
    err = decode_failure(json.dumps(body).encode())
    assert (err.field, err.message) == (field, message)


def test_decode_error_for_malformed_json() -> None:
    err = decode_failure(b'{"personalizations": [')
    assert err.field is None
    assert err.message.startswith("Bad Request: the body is not valid JSON")


# -- total size --------------------------------------------------------------------------------


def test_message_size_counts_content_and_decoded_attachments() -> None:
    body = mail(
        content=[{"type": "text/plain", "value": "héllo"}, {"type": "text/html", "value": "<b>"}],
        attachments=[
            att(content=base64.b64encode(b"x" * 1000).decode()),
            att(content=base64.encodebytes(b"y" * 5).decode()),
        ],
    )
    req = decode_request(json.dumps(body).encode())
    assert message_size(req) == 6 + 3 + 1000 + 5


def test_message_size_of_an_unvalidated_request() -> None:
    req = decode_request(b"{}")
    assert message_size(req) == 0
    req = decode_request(json.dumps({"attachments": [{"content": "!!", "filename": ""}]}).encode())
    assert message_size(req) >= 0


def test_message_size_limit_is_separate_from_validate() -> None:
    assert MAX_MESSAGE_BYTES == 30 * 1024 * 1024
    big = base64.b64encode(b"\0" * MAX_MESSAGE_BYTES).decode()
    req = decode_request(json.dumps(mail(attachments=[att(content=big)])).encode())
    assert message_size(req) >= MAX_MESSAGE_BYTES
    assert validate(req, NOW) == []


# -- speed -------------------------------------------------------------------------------------


def test_validating_100_personalizations_is_fast() -> None:
    body = mail(
        personalizations=[
            pers(
                to=[{"email": f"user{i}@example.com", "name": f"User {i}"}],
                cc=[{"email": f"cc{i}@example.org"}],
                subject=f"Hi {i}",
                headers={"X-Id": str(i)},
                custom_args={"uid": str(i)},
                substitutions={"-n-": str(i)},
                send_at=int(NOW) + HOUR,
            )
            for i in range(100)
        ],
        custom_args={"campaign": "c"},
    )
    req = decode_request(json.dumps(body).encode())
    # Its cost (~0.3 ms) is measured by `postline bench accept`, not asserted here.
    assert validate(req, NOW) == []
