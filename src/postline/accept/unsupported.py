"""Fields of a send request that Postline cannot act on yet: a 400 naming each one.

Answering 202 and then sending a message without the template, the footer or the tracking
the request asked for is a wrong message delivered (issue 12: ``template_id`` went out with
no Subject and an empty body). The table of every field and what it does is in
:mod:`postline.accept.validate`; this module holds the ones that do nothing yet.

A setting that is present but disabled (``"enable": false``, or ``enable`` absent) asks
for nothing, so it is accepted: clients such as SendGrid's own helpers send
``tracking_settings.click_tracking.enable = false`` to turn tracking off. An empty string
or object counts as absent too. When a feature arrives, its line here goes away.
"""

from __future__ import annotations

from postline.model.errors import FieldError
from postline.model.mail import MailSendRequest, MailSettings, TrackingSettings

Errors = list[FieldError]


def _not_yet(what: str, hint: str) -> str:
    return f"Postline does not support {what} yet, so this field would have no effect; {hint}"


TEMPLATE_ID = _not_yet(
    "templates (template_id)",
    "render the message yourself and send its subject and content in the request.",
)
TEMPLATE_DATA = _not_yet(
    "dynamic templates (dynamic_template_data)",
    "send the rendered subject and content, or use substitutions for per-recipient text.",
)
BATCH_ID = _not_yet(
    "batches (batch_id, to pause or cancel scheduled sends)",
    "remove batch_id (send_at works without it).",
)
IP_POOL = _not_yet(
    "IP pools (ip_pool_name)", "remove ip_pool_name: mail leaves from the node's own address."
)
SECTIONS = _not_yet(
    "section tags (sections)", "put the section text into your substitution values instead."
)
BYPASS = _not_yet(
    "{name}",
    "suppressed recipients are always dropped. Remove the setting (or set enable to false), "
    "or remove the address from the suppression list before sending.",
)
FOOTER = _not_yet(
    "footers (mail_settings.footer)",
    "put the footer into your content, or set mail_settings.footer.enable to false.",
)
MAIL_BCC = _not_yet(
    "the bcc mail setting (mail_settings.bcc)",
    "add the address to personalizations[].bcc instead, or set enable to false.",
)
SPAM_CHECK = _not_yet(
    "spam checks (mail_settings.spam_check)", "remove the setting or set enable to false."
)
TRACKING = _not_yet(
    "{name} (tracking_settings.{name})",
    "remove the setting or set tracking_settings.{name}.enable to false.",
)

_BYPASS = (
    "bypass_list_management",
    "bypass_spam_management",
    "bypass_bounce_management",
    "bypass_unsubscribe_management",
)
_TRACKING = ("click_tracking", "open_tracking", "subscription_tracking", "ganalytics")


def check_unsupported(errs: Errors, req: MailSendRequest) -> None:
    """One error per field that asks for a feature Postline does not have yet."""
    for value, field, message in (
        (req.template_id, "template_id", TEMPLATE_ID),
        (req.batch_id, "batch_id", BATCH_ID),
        (req.ip_pool_name, "ip_pool_name", IP_POOL),
        (req.sections, "sections", SECTIONS),
    ):
        if value:  # None, "" and {} ask for nothing
            errs.append(FieldError(message, field))
    for i, p in enumerate(req.personalizations or ()):
        if p.dynamic_template_data:
            errs.append(FieldError(TEMPLATE_DATA, f"personalizations.{i}.dynamic_template_data"))
    if req.mail_settings is not None:
        _check_mail_settings(errs, req.mail_settings)
    if req.tracking_settings is not None:
        _check_tracking(errs, req.tracking_settings)


def _check_mail_settings(errs: Errors, ms: MailSettings) -> None:
    """sandbox_mode acts (200, nothing sent); the others do nothing yet when enabled."""
    for name in _BYPASS:
        if _enabled(getattr(ms, name)):
            field = f"mail_settings.{name}"
            errs.append(FieldError(BYPASS.format(name=field), field))
    for setting, field, message in (
        (ms.footer, "mail_settings.footer", FOOTER),
        (ms.bcc, "mail_settings.bcc", MAIL_BCC),
        (ms.spam_check, "mail_settings.spam_check", SPAM_CHECK),
    ):
        if _enabled(setting):
            errs.append(FieldError(message, field))


def _check_tracking(errs: Errors, ts: TrackingSettings) -> None:
    for name in _TRACKING:
        if _enabled(getattr(ts, name)):
            field = f"tracking_settings.{name}"
            errs.append(FieldError(TRACKING.format(name=name), field))


def _enabled(setting: object) -> bool:
    return getattr(setting, "enable", None) is True
