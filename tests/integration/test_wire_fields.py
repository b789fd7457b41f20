"""Nothing accepted and then ignored (issue 12, item 1), against a real node and receiver.

A request using a field Postline cannot act on yet (templates, tracking, unsubscribe
groups, footers, batches, IP pools, ...) was answered 202 and delivered without it: with
``template_id``, a message with no Subject and an empty body. Now it is a 400 in SendGrid's
shape naming the field, and nothing is stored or sent. A setting that is present but
disabled asks for nothing and is still delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from tests.conftest import call, simple_mail, spool_snapshot
from tests.integration.test_delivery import fast_config

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.node import NodeProcess


@pytest.fixture(scope="module")
def mx() -> Iterator[FakeSmtpServer]:
    with running_in_thread(FakeSmtpServer()) as server:
        yield server


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, mx: FakeSmtpServer) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("wire-fields"), fast_config(mx.port))
    node.start()
    node.key = node.create_key()  # type: ignore[attr-defined]
    yield node
    node.stop()


def in_personalization(**fields: Any) -> dict[str, Any]:
    return simple_mail(personalizations=[{"to": [{"email": "bob@example.com"}], **fields}])


def settings(section: str, name: str, **values: Any) -> dict[str, Any]:
    return simple_mail(**{section: {name: {"enable": True, **values}}})


UNSUPPORTED: dict[str, tuple[dict[str, Any], str]] = {
    "template_id": (simple_mail(template_id="d-0123456789abcdef"), "template_id"),
    "template without content": (
        {**simple_mail(template_id="d-1"), "content": None, "subject": None},
        "template_id",
    ),
    "dynamic_template_data": (
        in_personalization(dynamic_template_data={"name": "Bob"}),
        "personalizations.0.dynamic_template_data",
    ),
    "batch_id": (
        simple_mail(batch_id="MWQxZmIyODYtNjE1Ni0xMWU1LWI3ZTUtMDgwMDI3OGJkMmY2"),
        "batch_id",
    ),
    "ip_pool_name": (simple_mail(ip_pool_name="marketing"), "ip_pool_name"),
    "sections": (simple_mail(sections={":s": "section text"}), "sections"),
    "footer": (
        settings("mail_settings", "footer", text="--\nACME", html="<p>ACME</p>"),
        "mail_settings.footer",
    ),
    "bcc setting": (
        settings("mail_settings", "bcc", email="archive@example.com"),
        "mail_settings.bcc",
    ),
    "spam_check": (
        settings("mail_settings", "spam_check", threshold=5),
        "mail_settings.spam_check",
    ),
    "click_tracking": (
        settings("tracking_settings", "click_tracking"),
        "tracking_settings.click_tracking",
    ),
    "open_tracking": (
        settings("tracking_settings", "open_tracking"),
        "tracking_settings.open_tracking",
    ),
    "subscription_tracking": (
        settings("tracking_settings", "subscription_tracking", text="Unsubscribe"),
        "tracking_settings.subscription_tracking",
    ),
    "ganalytics": (
        settings("tracking_settings", "ganalytics", utm_source="news"),
        "tracking_settings.ganalytics",
    ),
    **{
        name: (settings("mail_settings", name), f"mail_settings.{name}")
        for name in (
            "bypass_list_management",
            "bypass_spam_management",
            "bypass_bounce_management",
            "bypass_unsubscribe_management",
        )
    },
}


def _drop_nones(mail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mail.items() if v is not None}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_field_is_a_400_naming_it(node: Any, mx: FakeSmtpServer, case: str) -> None:
    mail, field = UNSUPPORTED[case]
    before, sent = spool_snapshot(node.data_dir), len(mx.transactions)
    r = call(node.http_port, "POST", "/v3/mail/send", _drop_nones(mail), key=node.key)
    assert r.status == 400, (case, r.status, r.body)
    (error,) = r.json()["errors"]
    assert error["field"] == field
    assert error["message"].startswith("Postline does not support")
    assert "yet" in error["message"]
    after = spool_snapshot(node.data_dir)
    assert (after.messages, len(after.events)) == (before.messages, len(before.events))
    assert len(mx.transactions) == sent


def test_every_unsupported_field_is_named_at_once(node: Any) -> None:
    mail = simple_mail(
        template_id="d-1",
        tracking_settings={"open_tracking": {"enable": True}},
    )
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.key)
    assert r.status == 400
    fields = [e["field"] for e in r.json()["errors"]]
    assert fields == ["template_id", "tracking_settings.open_tracking"]


def test_disabled_settings_are_accepted_and_delivered(node: Any, mx: FakeSmtpServer) -> None:
    """What SendGrid's helpers send to turn a feature off asks for nothing: delivered."""
    off = {"enable": False}
    mail = simple_mail(
        subject="Settings off",
        mail_settings={
            "footer": {"enable": False, "text": "never shown"},
            "bypass_list_management": off,
            "bypass_bounce_management": off,
            "bcc": off,
            "spam_check": {"enable": False, "threshold": 5},
            "sandbox_mode": off,
        },
        tracking_settings={
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": off,
            "subscription_tracking": off,
            "ganalytics": off,
        },
        personalizations=[{"to": [{"email": "off@example.com"}], "dynamic_template_data": {}}],
    )
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=node.key)
    assert r.status == 202, r.body
    deadline = time.monotonic() + 20
    while not any("off@example.com" in t.rcpts for t in list(mx.transactions)):
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.05)
    (tx,) = [t for t in mx.transactions if "off@example.com" in t.rcpts]
    msg = message_from_bytes(tx.data)
    assert msg["Subject"] == "Settings off"
    assert b"never shown" not in tx.data
