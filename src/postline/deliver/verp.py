"""The return path: ``bounces+<token>@<bounce domain>``, a VERP address naming the message.

Bounces that arrive later (RFC 3464 DSNs) and complaints (RFC 5965 ARF) are sent to the
envelope sender; the token in its local part says which message they are about, so
``postline inbound`` can record them for the right tenant and ``sg_message_id``.

The token names the message (one personalization), not the recipient: one SMTP
transaction carries every recipient of a message at one domain, and a per-recipient
address would split it into one transaction per recipient. The DSN's Original-Recipient
or Final-Recipient field says which recipient failed (RFC 3464 §2.3.1, §2.3.2), as at
most ESPs for multi-recipient mail.

Layout: ``x_message_id`` (16 bytes) ‖ personalization index (2 bytes) ‖ MAC (8 bytes),
lower-case base32 without padding: 42 characters, a 50-octet local part (RFC 5321
§4.5.3.1.1 allows 64). Lower case because some MTAs lower-case local parts; base32 is
case-insensitive, so the token survives either way. The MAC is HMAC-SHA256 over the
tenant and the whole ``sg_message_id`` (node name included), truncated to 64 bits: an
attacker must guess it online, one bounce at a time. The tenant is not carried (tenant
names are unbounded and the 64-octet limit is not): ``postline inbound`` finds it by
checking the MAC against the node's tenants (keys.db), so nothing about the message needs
to be stored after delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from postline.model.ids import sg_message_id as make_sg_message_id

PREFIX = "bounces+"
SECRET_FILE = "bounce.key"  # in data_dir, when [bounces] secret is empty
_DOMAIN_SEP = b"postline-verp-1\0"
_MAC_BYTES = 8
_XID_BYTES = 16
_TOKEN_BYTES = _XID_BYTES + 2 + _MAC_BYTES
_MAX_INDEX = 0xFFFF
_SHA256_BLOCK = 64
_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]
_URLSAFE = bytes.maketrans(b"-_", b"+/")


class BadToken(Exception):
    """The address carries no token, or one that does not decode or verify."""


@dataclass(frozen=True, slots=True)
class MessageRef:
    """What a verified token names."""

    tenant: str
    sg_message_id: str
    x_message_id: str
    index: int


class ReturnPath:
    """Makes and checks VERP addresses with one secret key."""

    def __init__(self, key: bytes, domain: str = "") -> None:
        self._inner, self._outer = _hmac_states(key)
        self.domain = domain.lower()  # "": the From address's domain

    def address(self, tenant: str, sg_message_id: str, from_domain: str) -> str | None:
        """The envelope sender of a message; None when its id is not one this node makes."""
        parts = sg_message_id.split(".")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) > _MAX_INDEX:
            return None
        try:
            # base64.urlsafe_b64decode without its pure-Python wrapping (same result)
            xid = binascii.a2b_base64(parts[0].encode("ascii").translate(_URLSAFE) + b"==")
        except (binascii.Error, ValueError):
            return None
        if len(xid) != _XID_BYTES:
            return None
        raw = xid + int(parts[2]).to_bytes(2, "big") + self._mac(tenant, sg_message_id)
        return f"{PREFIX}{_b32(raw)}@{self.domain or from_domain}"

    def verify(self, address: str, tenants: Iterable[str], nodes: Iterable[str]) -> MessageRef:
        """The message a VERP address names; BadToken when it is not one of ours."""
        xid, index, mac = _decode(address)
        x_message_id = base64.urlsafe_b64encode(xid).rstrip(b"=").decode("ascii")
        for node in nodes:
            sg_id = make_sg_message_id(x_message_id, node, index)
            for tenant in tenants:
                if hmac.compare_digest(mac, self._mac(tenant, sg_id)):
                    return MessageRef(tenant, sg_id, x_message_id, index)
        raise BadToken(f"the token of {address!r} does not verify (forged, altered or another key)")

    def verify_for(
        self, tenants: Iterable[str], nodes: Iterable[str]
    ) -> Callable[[str], MessageRef]:
        """``verify`` with the candidates fixed (``postline inbound`` knows them up front)."""
        tenant_list, node_list = list(tenants), list(nodes)
        return lambda address: self.verify(address, tenant_list, node_list)

    def _mac(self, tenant: str, sg_id: str) -> bytes:
        """HMAC-SHA256 (RFC 2104) from the keyed states made once: a third of the cost of
        ``hmac.new`` per message (it runs for every message sent)."""
        inner = self._inner.copy()
        inner.update(_DOMAIN_SEP + tenant.encode() + b"\0" + sg_id.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]


def _hmac_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 after H(K ^ ipad) and H(K ^ opad), RFC 2104 section 2."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def _b32(raw: bytes) -> str:
    """Lower-case base32 (RFC 4648 alphabet) of the 26-byte token, without padding: two
    characters per table look-up (``base64.b32encode`` is pure Python and 2.5x slower)."""
    n = int.from_bytes(raw, "big") << 2  # 208 bits -> 210, a whole number of characters
    return "".join([_B32_PAIRS[(n >> shift) & 0x3FF] for shift in range(200, -1, -10)])


def is_verp(address: str) -> bool:
    return address.strip().strip("<>").lower().startswith(PREFIX)


def _decode(address: str) -> tuple[bytes, int, bytes]:
    local = address.strip().strip("<>").rpartition("@")[0].lower()
    if not local.startswith(PREFIX):
        raise BadToken(f"{address!r} is not a bounce address ({PREFIX}<token>@domain)")
    token = local[len(PREFIX) :].upper()
    try:
        raw = base64.b32decode(token + "=" * (-len(token) % 8))
    except (binascii.Error, ValueError):
        raise BadToken(f"the token of {address!r} is not base32") from None
    # The last character carries 2 unused bits: only the canonical spelling is accepted,
    # so an altered token never verifies.
    if len(raw) != _TOKEN_BYTES or base64.b32encode(raw).decode().rstrip("=") != token:
        raise BadToken(f"the token of {address!r} has the wrong length or spelling")
    index = int.from_bytes(raw[_XID_BYTES : _XID_BYTES + 2], "big")
    return raw[:_XID_BYTES], index, raw[_XID_BYTES + 2 :]


def load_key(secret: str, data_dir: str) -> bytes:
    """The configured secret, or the one generated once into ``<data_dir>/bounce.key``.

    The node and ``postline inbound`` both call this. The new key is written whole to a
    temporary file and hard-linked into place, so the first writer wins and nobody reads
    a half-written key."""
    if secret:
        return secret.encode()
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{SECRET_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            tmp.unlink()
    return path.read_text(encoding="ascii").strip().encode()
