"""DKIM signing cost: signs per second of a 2 KB message, Postline's signer beside dkimpy's.

    .venv/bin/python bench/dkim_cost.py [--seconds 2]

Both sign the same rendered message with relaxed/relaxed and the same key, on one core.
dkimpy's Ed25519 needs PyNaCl; without it that row says so.
"""

from __future__ import annotations

import argparse
import base64
import functools
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postline.deliver.dkim import OVERSIGNED, SIGNED_PRESENT, DkimSigner
from postline.deliver.render import render
from postline.model.mail import Content, EmailAddress, MailBody, Personalization

PARA = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. "


def message() -> bytes:
    body = MailBody(
        from_=EmailAddress("news@example.com", "Example News"),
        subject="Your weekly digest",
        content=[
            Content("text/plain", (PARA * 13)[:1000]),
            Content("text/html", ("<p>" + PARA * 12 + "</p>")[:1000]),
        ],
    )
    pers = Personalization(to=[EmailAddress("alice@example.org", "Alice Example")])
    return render(body, pers, message_id="bench@pl1", date=1_700_000_000).data


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            fn()
        count += 10
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    data = message()
    keys: dict[str, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {
        "rsa-sha256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519-sha256": ed25519.Ed25519PrivateKey.generate(),
    }
    print(f"message: {len(data)} bytes; {args.seconds:g} s per figure, one core")
    print(f"{'algorithm':<16} {'postline signs/s':>18} {'dkimpy signs/s':>16} {'ratio':>7}")
    for algorithm, key in keys.items():
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8 if algorithm != "rsa-sha256"
            else serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )  # fmt: skip
        ours = rate(
            functools.partial(DkimSigner("example.com", "s1", pem, algorithm).sign, data),
            args.seconds,
        )
        theirs_text, ratio, dkimpy_key = "n/a", "", pem
        if algorithm == "ed25519-sha256":  # dkimpy takes the base64 of the raw 32-octet seed
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )  # fmt: skip
            dkimpy_key = base64.b64encode(raw)
        try:
            theirs = rate(
                functools.partial(
                    dkim.sign, data, b"s1", b"example.com", dkimpy_key,
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[h.encode() for h in (*OVERSIGNED, *SIGNED_PRESENT)],
                    signature_algorithm=algorithm.encode(),
                ),
                args.seconds,
            )  # fmt: skip
            theirs_text, ratio = f"{theirs:,.0f}", f"{ours / theirs:.1f}x"
        except Exception as exc:  # dkimpy without PyNaCl cannot sign Ed25519
            theirs_text = f"n/a ({type(exc).__name__})"
        print(f"{algorithm:<16} {ours:>18,.0f} {theirs_text:>16} {ratio:>7}")


if __name__ == "__main__":
    main()
