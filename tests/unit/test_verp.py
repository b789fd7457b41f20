"""The VERP return path: bounces+<token>@domain names the message and cannot be forged."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from postline.deliver.verp import BadToken, ReturnPath, is_verp, load_key

SG_ID = "Vb3pG0yfT2mYb2kqQ2yW1A.pl1.7"
TENANTS = ["acme", "default", "globex"]


def make() -> ReturnPath:
    return ReturnPath(b"k" * 32, "Bounces.Example.com")


def test_address_shape_fits_a_local_part() -> None:
    addr = make().address("acme", SG_ID, "example.com")
    assert addr is not None
    local, _, domain = addr.partition("@")
    assert domain == "bounces.example.com"
    assert local.startswith("bounces+") and local == local.lower()
    assert len(local) <= 64  # RFC 5321 4.5.3.1.1
    assert local[len("bounces+") :].isalnum()


def test_from_domain_when_no_bounce_domain() -> None:
    addr = ReturnPath(b"k").address("acme", SG_ID, "mail.example.org")
    assert addr is not None and addr.endswith("@mail.example.org")


def test_round_trip_names_tenant_and_message() -> None:
    rp = make()
    addr = rp.address("globex", SG_ID, "example.com")
    assert addr is not None
    ref = rp.verify(addr, TENANTS, ["pl1"])
    assert (ref.tenant, ref.sg_message_id, ref.index) == ("globex", SG_ID, 7)
    assert ref.x_message_id == "Vb3pG0yfT2mYb2kqQ2yW1A"


def test_survives_upper_casing_and_angle_brackets() -> None:
    rp = make()
    addr = rp.address("acme", SG_ID, "example.com")
    assert addr is not None
    assert rp.verify(f"<{addr.upper()}>", TENANTS, ["pl1"]).tenant == "acme"


def test_every_altered_character_is_refused() -> None:
    rp = make()
    addr = rp.address("acme", SG_ID, "example.com")
    assert addr is not None
    local, _, domain = addr.partition("@")
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(len("bounces+"), len(local)):
        c = alphabet[(alphabet.index(local[i]) + 1) % 32]
        forged = f"{local[:i]}{c}{local[i + 1 :]}@{domain}"
        with pytest.raises(BadToken):
            rp.verify(forged, TENANTS, ["pl1"])


def test_other_key_tenant_or_node_is_refused() -> None:
    addr = make().address("acme", SG_ID, "example.com")
    assert addr is not None
    with pytest.raises(BadToken):
        ReturnPath(b"other key").verify(addr, TENANTS, ["pl1"])
    with pytest.raises(BadToken):
        make().verify(addr, ["globex"], ["pl1"])
    with pytest.raises(BadToken):
        make().verify(addr, TENANTS, ["pl2"])


def test_a_token_made_for_another_message_does_not_name_this_one() -> None:
    rp = make()
    addr = rp.address("acme", SG_ID, "example.com")
    assert addr is not None
    token = addr.split("+")[1].split("@")[0].upper()
    raw = bytearray(base64.b32decode(token + "=" * (-len(token) % 8)))
    raw[17] ^= 1  # personalization 7 -> 6, MAC kept
    forged = base64.b32encode(bytes(raw)).decode().rstrip("=").lower()
    with pytest.raises(BadToken):
        rp.verify(f"bounces+{forged}@bounces.example.com", TENANTS, ["pl1"])


@pytest.mark.parametrize(
    "addr",
    ["bob@example.com", "bounces+@x", "bounces+abc@x", "bounces+!!!!@x", "bounces+" + "a" * 56],
)
def test_malformed_addresses_are_refused(addr: str) -> None:
    with pytest.raises(BadToken):
        make().verify(addr, TENANTS, ["pl1"])


@pytest.mark.parametrize(
    "sg_id", ["x.pl1.0", "Vb3pG0yfT2mYb2kqQ2yW1A.pl1", "Vb3pG0yfT2mYb2kqQ2yW1A.pl1.x"]
)
def test_ids_not_made_here_get_no_token(sg_id: str) -> None:
    assert make().address("acme", sg_id, "example.com") is None


def test_is_verp() -> None:
    assert is_verp("<Bounces+abc@x>") and not is_verp("bob@x")


def test_generated_key_is_kept_and_private(tmp_path: Path) -> None:
    key = load_key("", str(tmp_path / "data"))
    assert len(key) == 64
    assert load_key("", str(tmp_path / "data")) == key
    assert (os.stat(tmp_path / "data" / "bounce.key").st_mode & 0o777) == 0o600
    assert load_key("configured", str(tmp_path / "data")) == b"configured"


def test_mac_is_standard_hmac_sha256() -> None:
    import hashlib
    import hmac

    for key in (b"k", b"x" * 64, b"long key " * 20):
        rp = ReturnPath(key)
        msg = b"postline-verp-1\0acme\0" + SG_ID.encode()
        assert rp._mac("acme", SG_ID) == hmac.new(key, msg, hashlib.sha256).digest()[:8]


def test_token_is_standard_base32() -> None:
    addr = make().address("acme", SG_ID, "example.com")
    assert addr is not None
    token = addr.split("+")[1].split("@")[0]
    raw = base64.b32decode(token.upper() + "======")
    assert base64.b32encode(raw).decode().rstrip("=").lower() == token
