"""Signing a webhook post exactly as SendGrid signs (sendgrid-compat.md §2.3).

ECDSA over P-256 with SHA-256, of the UTF-8 bytes of ``timestamp + body``; the signature
is base64 of its ASN.1 DER ``SEQUENCE{r, s}`` (what ``cryptography`` returns), the public
key base64 of its DER SubjectPublicKeyInfo without PEM armour (124 characters, starting
``MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE``). The official client's
``EventWebhook().verify_signature(body, signature, timestamp, key)`` checks it
(tests/unit/test_webhook_signing.py runs that helper).
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def new_private_key() -> bytes:
    """A fresh P-256 key as PKCS#8 DER (what the store keeps)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_b64(private_der: bytes) -> str:
    """The verification key in SendGrid's shape: base64 DER SubjectPublicKeyInfo."""
    public = _load(private_der).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


class Signer:
    """Signs bodies with one webhook's key (loaded once)."""

    def __init__(self, private_der: bytes) -> None:
        self._key = _load(private_der)

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        ts = str(timestamp)
        signature = self._key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: ts}


def _load(private_der: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(private_der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("a webhook signing key must be an EC key")
    return key
