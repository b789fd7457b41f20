"""DKIM signing (RFC 6376) with ``cryptography``: rsa-sha256 and ed25519-sha256 (RFC 8463).

Canonicalization is relaxed/relaxed (§3.4.2, §3.4.4), which survives the re-folding and
whitespace changes of relays. The fields of :data:`OVERSIGNED` are signed as often as they
appear (the bottom instance first, §5.4.2) and once more, even when absent: the extra name
in ``h=`` stands for a null field, so a Subject, To or Cc prepended later breaks the
signature instead of being shown above the signed one ("oversigning", §5.4.2, §8.15).
:data:`SIGNED_PRESENT` are signed as often as they appear, not oversigned: relays and lists
may add them (Sender, List-*); List-Unsubscribe(-Post) must be signed when present for
one-click unsubscription (RFC 8058 §4).

dkimpy is the independent verifier in the tests; it is not used to sign because it is
several times slower (``bench/dkim_cost.py`` prints both).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from postline.config import ConfigError, DkimKey
from postline.model.domain import a_label

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
OVERSIGNED = (
    "from", "to", "cc", "subject", "date", "reply-to", "message-id", "mime-version",
    "content-type", "content-transfer-encoding",
)  # fmt: skip
SIGNED_PRESENT = (
    "in-reply-to", "references", "sender", "list-unsubscribe", "list-unsubscribe-post",
)  # fmt: skip
_WSP_RUN = re.compile(rb"[ \t]{2,}|\t")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_SIG_CHUNK = 72  # characters of b= per line


class DkimSigner:
    """Signs messages for one sending domain with one key."""

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: bytes,
        algorithm: str = "rsa-sha256",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown DKIM algorithm {algorithm!r}: use one of {ALGORITHMS}")
        key = serialization.load_pem_private_key(private_key, password=None)
        wanted = rsa.RSAPrivateKey if algorithm == "rsa-sha256" else ed25519.Ed25519PrivateKey
        if not isinstance(key, wanted):
            raise ValueError(f"the private key does not fit {algorithm}")
        ascii_domain = a_label(domain.rstrip("."))
        if ascii_domain is None:
            raise ValueError(f"{domain!r} is not a valid domain name (IDNA2008)")
        self.domain = ascii_domain
        self.selector = selector
        self.algorithm = algorithm
        self._key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = key
        self._clock = clock

    def sign(self, message: bytes) -> bytes:
        """The ``DKIM-Signature`` field (folded, ending in CRLF) to put before ``message``.

        ``message`` is as it will be sent: CRLF line endings, not dot-stuffed.
        """
        fields, body = _split(message)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        chosen = _choose(fields)
        names = [name for name, _ in chosen]
        tags = [
            "v=1;", f"a={self.algorithm};", "c=relaxed/relaxed;", f"d={self.domain};",
            f"s={self.selector};", f"t={int(self._clock())};", *_h_tag(names), f"bh={body_hash};",
        ]  # fmt: skip
        unsigned = _fold("DKIM-Signature:", tags) + "\r\n b="
        digest = hashlib.sha256()
        for _, field in chosen:
            if field is not None:
                digest.update(relaxed_header(field))
        digest.update(relaxed_header(unsigned.encode("ascii"))[:-2])  # without its CRLF
        signature = base64.b64encode(self._sign(digest.digest())).decode("ascii")
        chunks = [signature[i : i + _SIG_CHUNK] for i in range(0, len(signature), _SIG_CHUNK)]
        return (unsigned + "\r\n ".join(chunks) + "\r\n").encode("ascii")

    def txt_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>`` (RFC 6376 §3.6.1)."""
        public = self._key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):  # RFC 8463 §4: the raw 32 octets
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"

    def _sign(self, digest: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(digest)  # RFC 8463 §3: Ed25519 signs the SHA-256 hash
        return self._key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def signer_for(keys: dict[str, DkimKey]) -> Callable[[str], DkimSigner | None]:
    """Load every key now (a bad one stops the start); look up by sending domain.

    A domain without its own key uses its nearest parent's (``news.example.com`` signs as
    ``d=example.com``), which DMARC's relaxed alignment accepts (RFC 7489 §3.1.1).
    """
    signers: dict[str, DkimSigner] = {}
    for domain, key in keys.items():
        where = f"delivery.dkim.{domain}"
        try:
            pem = Path(key.private_key).read_bytes()
        except OSError as exc:
            reason = f"cannot read {key.private_key}: {exc.strerror}"
            raise ConfigError(f"{where}.private_key: {reason}") from None
        try:
            signer = DkimSigner(domain, key.selector, pem, key.algorithm)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        signers[signer.domain] = signer

    def lookup(domain: str) -> DkimSigner | None:
        name = domain.lower().rstrip(".")
        while name:
            if name in signers:
                return signers[name]
            name = name.partition(".")[2]
        return None

    return lookup


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfolded, blanks squeezed and trimmed, CRLF."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: blanks squeezed, none at line ends, no empty lines at the end."""
    body = _WSP_RUN.sub(b" ", body).replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    body = body[:end].removesuffix(b" ")
    return body + b"\r\n" if body else b""


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folds, without the final CRLF) and the body."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[:end], message[end + 4 :])
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields, body


def _choose(fields: list[bytes]) -> list[tuple[str, bytes | None]]:
    """The (name, field) pairs to sign in ``h=`` order; None for an oversigned null field."""
    by_name: dict[str, list[bytes]] = {}
    for field in fields:
        name = field.partition(b":")[0].rstrip(b" \t").lower().decode("ascii", "replace")
        by_name.setdefault(name, []).append(field)
    chosen: list[tuple[str, bytes | None]] = []
    for name in OVERSIGNED:
        chosen += [(name, f) for f in reversed(by_name.get(name, []))]  # bottom up, §5.4.2
        chosen.append((name, None))
    for name in SIGNED_PRESENT:
        chosen += [(name, f) for f in reversed(by_name.get(name, []))]
    return chosen


def _h_tag(names: list[str]) -> list[str]:
    """``h=a:b:...;`` in pieces of about 60 characters, to fold after a colon."""
    pieces, line = [], "h="
    for i, name in enumerate(names):
        line += name + (";" if i == len(names) - 1 else ":")
        if len(line) > 60:
            pieces.append(line)
            line = ""
    return [*pieces, line] if line else pieces


def _fold(start: str, tokens: list[str]) -> str:
    lines, line = [], start
    for token in tokens:
        if len(line) + 1 + len(token) > 78:
            lines.append(line)
            line = ""
        line += " " + token
    return "\r\n".join([*lines, line])
