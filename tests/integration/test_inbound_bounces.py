"""Return path and asynchronous bounces, end to end: a real node delivers with a VERP
envelope sender; a DSN or ARF report for that message, fed to ``postline inbound`` (as a
local MTA's pipe would), becomes an event and a suppression in the node's spool.

The DSNs are Postfix's own: a golden one (tests/golden/dsn/generate.py) with this run's
return path put in, and, where root and Postfix are available, one made live by a private
Postfix instance relaying the node's message to a destination that refuses it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import SpoolSnapshot, call, simple_mail, spool_snapshot

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess, postline_cmd

GOLDEN = Path(__file__).parents[1] / "golden" / "dsn"
GOLDEN_RP = b"bounces+kw66sg2mt5hwtgdpneveg3ew2qaaaxklbgsvzroula@bounces.example.com"
BOUNCE_DOMAIN = "bounces.example.com"


def config(port: int, **bounces: Any) -> dict[str, Any]:
    return {
        "delivery": {
            "routes": {"*": f"127.0.0.1:{port}"},
            "retry_min": "300ms",
            "retry_max": "1s",
            "max_age": "30s",
        },
        "bounces": {"domain": BOUNCE_DOMAIN, **bounces},
    }


def send(node: NodeProcess, key: str, *to: str, **extra: Any) -> str:
    mail = simple_mail(**extra)
    mail["personalizations"] = [{"to": [{"email": r} for r in to]}]
    r = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert r.status == 202, r.body
    return r.headers["x-message-id"]


def wait_for(node: NodeProcess, done: Callable[[SpoolSnapshot], bool]) -> SpoolSnapshot:
    deadline = time.monotonic() + 30
    while True:
        snap = spool_snapshot(node.data_dir)
        if done(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.1)


def inbound(node: NodeProcess, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = postline_cmd("inbound", "--config", str(node.config_path), *args)
    return subprocess.run(cmd, input=raw, capture_output=True, timeout=60)


def golden_dsn(return_path: str, rcpt: str) -> bytes:
    raw = (GOLDEN / "postfix-remote-550.eml").read_bytes()
    return raw.replace(GOLDEN_RP, return_path.encode()).replace(
        b"550-gone@example.net", rcpt.encode()
    )


def delivered_with_verp(node: NodeProcess, mx: FakeSmtpServer, *to: str) -> tuple[str, str]:
    """Send one message to ``to``; (its sg_message_id, the envelope sender the MX saw)."""
    key = node.create_key(tenant="acme")
    send(node, key, *to)
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == len(to))
    (tx,) = mx.transactions
    assert sorted(tx.rcpts) == sorted(to)  # one transaction for the domain: batching kept
    return snap.of_type("delivered")[0]["sg_message_id"], tx.mail_from


def test_dsn_for_a_delivered_message_bounces_and_suppresses(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(config(fake_mx.port)).start()
    sg_id, mail_from = delivered_with_verp(node, fake_mx, "bob@example.com", "carol@example.com")
    local, _, domain = mail_from.partition("@")
    assert local.startswith("bounces+") and len(local) <= 64 and domain == BOUNCE_DOMAIN

    out = inbound(node, golden_dsn(mail_from, "bob@example.com"))
    assert out.returncode == 0, out.stderr
    snap = spool_snapshot(node.data_dir)
    (bounce,) = snap.of_type("bounce")
    assert (bounce["email"], bounce["sg_message_id"]) == ("bob@example.com", sg_id)
    assert (bounce["type"], bounce["status"]) == ("bounce", "5.1.1")
    assert bounce["bounce_classification"] == "Invalid Address"

    key = node.create_key(tenant="acme")
    send(node, key, "bob@example.com")
    (dropped,) = spool_snapshot(node.data_dir).of_type("dropped")
    assert (dropped["email"], dropped["reason"]) == ("bob@example.com", "Bounced Address")


def test_forged_or_foreign_token_is_refused(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(config(fake_mx.port)).start()
    _, mail_from = delivered_with_verp(node, fake_mx, "bob@example.com")
    token_at = len("bounces+") + 3
    flipped = "b" if mail_from[token_at] != "b" else "c"
    forged = mail_from[:token_at] + flipped + mail_from[token_at + 1 :]
    before = len(spool_snapshot(node.data_dir).events)
    for address in (forged, GOLDEN_RP.decode()):  # altered; made with another key
        out = inbound(node, golden_dsn(address, "bob@example.com"))
        assert out.returncode == 67, out.stdout  # EX_NOUSER: the MTA bounces it, no retry
        assert b"refused" in out.stderr
    assert len(spool_snapshot(node.data_dir).events) == before


def test_arf_complaint_makes_spamreport_and_suppresses(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(config(fake_mx.port)).start()
    sg_id, mail_from = delivered_with_verp(node, fake_mx, "reader@example.com")
    raw = (GOLDEN / "fbl-redacted-arf.eml").read_bytes()
    raw = raw.replace(GOLDEN_RP, mail_from.encode()).replace(
        b"reader@example-isp.com", b"reader@example.com"
    )
    out = inbound(node, raw)
    assert out.returncode == 0, out.stderr
    (report,) = spool_snapshot(node.data_dir).of_type("spamreport")
    assert (report["email"], report["sg_message_id"]) == ("reader@example.com", sg_id)
    send(node, node.create_key(tenant="acme"), "reader@example.com")
    (dropped,) = spool_snapshot(node.data_dir).of_type("dropped")
    assert dropped["reason"] == "Spam Reporting Address"


def test_no_spool_is_a_temporary_failure(tmp_path: Path) -> None:
    cfg = tmp_path / "postline.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "nowhere"}"\n')
    cmd = postline_cmd("inbound", "--config", str(cfg))
    out = subprocess.run(cmd, input=golden_dsn("x@y", "bob@example.com"), capture_output=True)
    assert out.returncode == 75 and b"no spool" in out.stderr  # EX_TEMPFAIL: the MTA retries
    assert not (tmp_path / "nowhere").exists()


def test_verp_off_keeps_the_from_address(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(config(fake_mx.port, verp=False)).start()
    send(node, node.create_key(), "bob@example.com")
    wait_for(node, lambda s: bool(s.of_type("delivered")))
    assert [t.mail_from for t in fake_mx.transactions] == [simple_mail()["from"]["email"]]


def _have_postfix() -> bool:
    return os.geteuid() == 0 and Path("/usr/sbin/postfix").exists()


@pytest.mark.skipif(not _have_postfix(), reason="needs root and Debian's postfix package")
def test_live_postfix_dsn(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """node → private Postfix → destination refusing 550 5.1.1 → Postfix's DSN to the VERP
    address (relayed to the same destination) → postline inbound."""
    from bench.postfix_peer import private_instance

    with private_instance(fake_mx.port) as postfix:
        node = node_factory(config(postfix.port)).start()
        key = node.create_key(tenant="acme")
        send(node, key, "550-gone@example.net")
        deadline = time.monotonic() + 60
        while not (dsns := [t for t in fake_mx.transactions if t.mail_from == ""]):
            assert time.monotonic() < deadline, postfix.maillog()[-3000:]
            time.sleep(0.2)
    (rcpt,) = dsns[0].rcpts
    assert rcpt.startswith("bounces+") and rcpt.endswith("@" + BOUNCE_DOMAIN)
    out = inbound(node, dsns[0].data, "--recipient", rcpt)
    assert out.returncode == 0, out.stderr
    snap = spool_snapshot(node.data_dir)
    (delivered,) = snap.of_type("delivered")  # Postfix took it: delivered, then bounced
    (bounce,) = snap.of_type("bounce")
    assert bounce["sg_message_id"] == delivered["sg_message_id"]
    assert (bounce["email"], bounce["status"]) == ("550-gone@example.net", "5.1.1")
    send(node, key, "550-gone@example.net")
    (dropped,) = spool_snapshot(node.data_dir).of_type("dropped")
    assert dropped["reason"] == "Bounced Address"
