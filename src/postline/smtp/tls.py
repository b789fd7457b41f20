"""The relay's TLS: the configured certificate, or a self-signed one made once into data_dir.

A relay that offers no STARTTLS makes every client send its API key in the clear, so a node
always has a certificate: ``[smtp] tls_cert`` / ``tls_key`` when set, else a self-signed
ECDSA P-256 pair generated at the first start into ``<data_dir>/smtp-tls.crt`` and
``smtp-tls.key`` (mode 0600) and reused afterwards; the log says which. Clients that verify
certificates need a real one: the log line names the keys to set.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("postline.smtp")

CERT_FILE = "smtp-tls.crt"
KEY_FILE = "smtp-tls.key"


class TlsSetupError(Exception):
    """The configured certificate or key cannot be used; the message names the keys."""


def server_context(cert: str, key: str, data_dir: str, hostname: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the configured pair or the generated one."""
    if not cert:
        cert, key = _generated(Path(data_dir), hostname)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(
            f"cannot load the SMTP certificate {cert} / key {key} (smtp.tls_cert, smtp.tls_key):"
            f" {exc}; fix the files, or unset both keys to use a self-signed certificate"
        ) from None
    return ctx


def _generated(data_dir: Path, hostname: str) -> tuple[str, str]:
    cert, key = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert.exists() and key.exists():
        log.info("SMTP TLS: using the self-signed certificate made earlier",
                 extra={"cert": str(cert)})  # fmt: skip
        return str(cert), str(key)
    cert_pem, key_pem = self_signed(hostname, days=3650)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_pem)
    cert.write_text(cert_pem)
    log.warning(
        "SMTP TLS: no certificate configured; generated a self-signed one (clients that "
        "verify certificates will refuse it: set smtp.tls_cert and smtp.tls_key)",
        extra={"cert": str(cert), "hostname": hostname},
    )
    return str(cert), str(key)


def self_signed(hostname: str, days: int = 30) -> tuple[str, str]:
    """(certificate PEM, key PEM) for ``hostname`` and 127.0.0.1, ECDSA P-256 (milliseconds
    to make, unlike RSA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()
