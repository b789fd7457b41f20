"""Signatures checked by the official SendGrid client's own helper."""

from __future__ import annotations

from sendgrid.helpers.eventwebhook import EventWebhook

from postline.webhooks.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Signer,
    new_private_key,
    public_key_b64,
)


def _verify(public: str, body: bytes, headers: dict[str, str]) -> bool:
    helper = EventWebhook()
    key = helper.convert_public_key_to_ecdsa(public)
    sig, ts = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    return bool(helper.verify_signature(body.decode(), sig, ts, key))


def test_the_official_helper_verifies_a_signed_body() -> None:
    key = new_private_key()
    body = '[{"email":"é@example.com","event":"processed","sg_event_id":"x"}]'.encode()
    headers = Signer(key).headers(body, 1_700_000_000)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert _verify(public_key_b64(key), body, headers)


def test_a_changed_body_or_timestamp_does_not_verify() -> None:
    key = new_private_key()
    headers = Signer(key).headers(b"[1]", 1_700_000_000)
    assert not _verify(public_key_b64(key), b"[2]", headers)
    later = {**headers, TIMESTAMP_HEADER: "1700000001"}
    assert not _verify(public_key_b64(key), b"[1]", later)


def test_the_public_key_has_sendgrid_shape() -> None:
    public = public_key_b64(new_private_key())
    assert len(public) == 124
    assert public.startswith("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")


def test_another_key_does_not_verify() -> None:
    body = b"[]"
    headers = Signer(new_private_key()).headers(body, 1)
    assert not _verify(public_key_b64(new_private_key()), body, headers)
