"""Webhook settings: defaults, PATCH semantics, bounds, the response shape."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from postline.webhooks.settings import (
    MAX_NAME,
    MAX_URL,
    SETTING_EVENTS,
    WebhookRequest,
    apply,
    check_request,
    new_webhook,
    shape,
)

# SendGrid's OpenAPI (tsg_webhooks_v3.json, beside the clone in ../shared/reference); its
# response schemas' properties are copied here so the test runs in a bare clone too, and
# checked against the file where it is present.
OAI = Path(__file__).resolve().parents[3] / "shared/reference/sendgrid-oai/tsg_webhooks_v3.json"
BASE_FIELDS = {
    "enabled", "url", "account_status_change", "group_resubscribe", "delivered",
    "group_unsubscribe", "spam_report", "bounce", "deferred", "unsubscribe", "processed",
    "open", "click", "dropped", "friendly_name", "id", "created_date", "updated_date",
    "oauth_client_id", "oauth_token_url",
}  # fmt: skip
SCHEMAS = {
    "EventWebhookUnsignedResponse": BASE_FIELDS,
    "EventWebhookSignedResponse": BASE_FIELDS | {"public_key"},
}


def _req(**fields: object) -> WebhookRequest:
    return msgspec.convert(fields, WebhookRequest)


def test_booleans_not_given_are_false_at_creation() -> None:
    hook = new_webhook("id1", "t", _req(url="https://x.test/", processed=True), 7, 100.0)
    assert hook.types == {"processed"} and not hook.enabled
    assert hook.start_offset == 7 and hook.created == hook.updated == 100.0


def test_patch_changes_only_what_it_names() -> None:
    hook = new_webhook("id1", "t", _req(url="https://x.test/", spam_report=True, open=True), 0, 1)
    hook = apply(hook, _req(open=False, enabled=True, friendly_name="n"), 2.0)
    assert hook.types == {"spam_report"} and hook.enabled and hook.friendly_name == "n"
    assert hook.events == {"spamreport"} and hook.url == "https://x.test/"
    assert hook.created == 1 and hook.updated == 2.0


def test_bounds_at_the_limit() -> None:
    ok_url = "https://x.test/" + "a" * (MAX_URL - len("https://x.test/"))
    assert check_request(_req(url=ok_url), creating=True) is None
    too_long = check_request(_req(url=ok_url + "a"), creating=True)
    assert too_long is not None and too_long.field == "url"
    assert check_request(_req(url="https://x", friendly_name="n" * MAX_NAME), creating=True) is None
    name = check_request(_req(url="https://x", friendly_name="n" * (MAX_NAME + 1)), creating=False)
    assert name is not None and name.field == "friendly_name"


def test_url_is_required_at_creation_only() -> None:
    missing = check_request(_req(enabled=True), creating=True)
    assert missing is not None and missing.field == "url"
    assert check_request(_req(enabled=True), creating=False) is None


def test_oauth_fields_go_together() -> None:
    alone = check_request(_req(url="https://x", oauth_client_id="c"), creating=True)
    assert alone is not None and alone.field == "oauth_token_url"
    secret = check_request(_req(url="https://x", oauth_client_secret="s"), creating=True)
    assert secret is not None
    full = _req(url="https://x", oauth_client_id="c", oauth_client_secret="s", oauth_token_url="u")
    assert check_request(full, creating=True) is None


@pytest.mark.parametrize("schema", ["EventWebhookSignedResponse", "EventWebhookUnsignedResponse"])
def test_shape_has_every_field_of_the_openapi_schema(schema: str) -> None:
    props = SCHEMAS[schema]
    hook = new_webhook("id1", "t", _req(url="https://x.test/"), 0, 1.0)
    out = shape(hook, public_key=schema == "EventWebhookSignedResponse")
    assert set(props) - {"account_status_change"} == set(out)


def test_every_setting_names_an_event() -> None:
    assert len(SETTING_EVENTS) == 11 and SETTING_EVENTS["spam_report"] == "spamreport"


def test_the_copied_fields_match_the_openapi_file() -> None:
    if not OAI.exists():
        pytest.skip(f"{OAI} is not beside this clone")
    schemas = json.loads(OAI.read_text())["components"]["schemas"]
    for name, fields in SCHEMAS.items():
        assert set(schemas[name]["properties"]) == fields
