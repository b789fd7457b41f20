"""The SMTP relay end to end: smtplib (and swaks) → a real node → the fake destination.

Each test drives a real ``postline serve`` over loopback as a SendGrid SMTP client would
(user ``apikey``, the key as password) and checks what reached the destination and what
the event log says.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from typing import Any

import pytest
from tests.conftest import spool_snapshot
from tests.integration.test_delivery import fast_config, wait_for

from postline.testing.fake_smtp import FakeSmtpServer
from postline.testing.node import NodeProcess


def relay_config(port: int, **smtp: Any) -> dict[str, Any]:
    cfg = fast_config(port)
    cfg["smtp"] = {"listen": "127.0.0.1:0", **smtp}
    return cfg


def message(to: str = "bob@example.com", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Ana <ana@sender.example>"
    msg["To"] = to
    msg["Subject"] = "Relayed"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello -name-, this went through the relay.\n")
    return msg


def client(node: NodeProcess, key: str | None = None) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10)
    if key is not None:
        smtp.login("apikey", key)
    return smtp


def test_auth_plain_relays_and_delivers_as_received(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    msg = message(Message_ID="<own-id@sender.example>")
    with client(node) as smtp:
        smtp.ehlo("client.example")
        assert "PLAIN" in smtp.esmtp_features["auth"]
        code, _ = smtp.docmd("AUTH PLAIN", _plain("apikey", key))
        assert code == 235
        refused = smtp.send_message(msg, "ana@sender.example", ["bob@example.com"])
        assert refused == {}
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert [e["event"] for e in snap.events] == ["processed", "delivered"], snap.events
    assert snap.events[0]["smtp-id"] == "<own-id@sender.example>"
    (got,) = fake_mx.transactions
    sent = msg.as_bytes().replace(b"\n", b"\r\n")
    # Delivered as received: a Received field first, a Date added at the end of the header
    # (the message had none), every other byte as sent.
    assert got.data.startswith(b"Received: from client.example")
    head, _, body = got.data.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n")
    assert fields[-1].startswith(b"Date: ")
    added = [f for f in fields if f.startswith((b"Received:", b"\t", b"Date:"))]
    assert len(added) == 4  # Received is three lines
    assert b"\r\n".join(f for f in fields if f not in added) + b"\r\n\r\n" + body == sent
    assert got.mail_from.startswith("bounces+") and got.rcpts == ("bob@example.com",)


def test_auth_login_and_wrong_key(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    with client(node) as smtp:
        smtp.ehlo("c.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.auth("LOGIN", lambda challenge=None: _login_answer(challenge, "SG.wrong.key"))
        assert err.value.smtp_code == 535
        smtp.user, smtp.password = "apikey", key
        code, _ = smtp.auth("LOGIN", smtp.auth_login)
        assert code == 235
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert len(fake_mx.transactions) == 1


def test_key_without_mail_send_scope_is_refused(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key(scopes="stats.read")
    with client(node) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as err:
        smtp.login("apikey", key)
    assert err.value.smtp_code == 535


def test_relaying_without_auth_is_530_unless_trusted(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    with client(node) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as err:
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    assert err.value.smtp_code == 530
    trusted = node_factory(
        relay_config(fake_mx.port, trusted_networks=["127.0.0.0/8"]), name="trusted"
    ).start()
    with client(trusted) as smtp:
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    wait_for(trusted, lambda s: len(s.of_type("delivered")) == 1)
    assert len(fake_mx.transactions) == 1
    assert spool_snapshot(node.data_dir).events == []  # the refused one left nothing


def test_plaintext_auth_needs_starttls_for_remote_clients(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """plaintext_auth_loopback = false treats this loopback client as remote."""
    node = node_factory(relay_config(fake_mx.port, plaintext_auth_loopback=False)).start()
    key = node.create_key()
    with client(node) as smtp:
        smtp.ehlo("c.example")
        assert not smtp.has_extn("auth") and smtp.has_extn("starttls")
        code, text = smtp.docmd("AUTH PLAIN", _plain("apikey", key))
        assert code == 538, text
        # The certificate was generated into data_dir: a client can verify against it.
        ctx = ssl.create_default_context(cafile=str(node.data_dir / "smtp-tls.crt"))
        ctx.check_hostname = False
        smtp.starttls(context=ctx)
        smtp.ehlo("c.example")
        assert "PLAIN" in smtp.esmtp_features["auth"]
        smtp.login("apikey", key)
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert len(snap.of_type("delivered")) == 1
    assert fake_mx.transactions[0].data.startswith(b"Received: from c.example")
    assert b"with ESMTPSA id" in fake_mx.transactions[0].data[:400]


def test_implicit_tls_listener(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, tls_listen=["127.0.0.1:0"])).start()
    key = node.create_key()
    ctx = ssl.create_default_context(cafile=str(node.data_dir / "smtp-tls.crt"))
    ctx.check_hostname = False
    with smtplib.SMTP_SSL("127.0.0.1", node.smtp_ports[1], context=ctx, timeout=10) as smtp:
        smtp.login("apikey", key)
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert len(fake_mx.transactions) == 1


def test_x_smtpapi_fans_out_with_substitutions_and_categories(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    api = {
        "to": ["Bob <bob@example.com>", "carol@example.org", "dan@example.net"],
        "sub": {"-name-": ["Bob", "Carol", "Dan"]},
        "category": ["newsletter", "weekly"],
        "unique_args": {"campaign": "c42"},
    }
    msg = message(to="list@sender.example", X_SMTPAPI=json.dumps(api))
    with client(node, key) as smtp:
        smtp.send_message(msg, "ana@sender.example", ["ignored-unless-new@example.com"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 4)
    delivered = snap.of_type("delivered")
    assert len(delivered) == 4, node.log_tail()
    assert all(e["category"] == ["newsletter", "weekly"] for e in delivered)
    assert all(e["campaign"] == "c42" for e in delivered)
    by_rcpt = {t.rcpts[0]: t.data for t in fake_mx.transactions}
    assert b"Hello Bob," in by_rcpt["bob@example.com"]
    assert b"To: Bob <bob@example.com>\r\n" in by_rcpt["bob@example.com"]
    assert b"Hello Carol," in by_rcpt["carol@example.org"]
    assert b"Hello Dan," in by_rcpt["dan@example.net"]
    # The RCPT TO beside "to" gets the message as it came (SendGrid sends it too).
    assert b"Hello -name-," in by_rcpt["ignored-unless-new@example.com"]
    assert all(b"X-SMTPAPI" not in d and b"x-smtpapi" not in d.lower() for d in by_rcpt.values())


def test_invalid_x_smtpapi_is_a_5xx_and_stores_nothing(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    with client(node, key) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.send_message(
                message(X_SMTPAPI='{"to": ["a@example.com",'), "ana@sender.example", ["b@x.example"]
            )
        assert 500 <= err.value.smtp_code < 600
        assert b"X-SMTPAPI" in err.value.smtp_error
        # The session goes on: the next message is taken.
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert [e["email"] for e in snap.events if e["event"] == "processed"] == ["bob@example.com"]


def test_suppressed_recipient_is_dropped(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    with client(node, key) as smtp:  # a hard bounce puts the address on the bounce list
        smtp.send_message(message(), "ana@sender.example", ["550-gone@example.com"])
    wait_for(node, lambda s: bool(s.of_type("bounce")))
    with client(node, key) as smtp:
        smtp.send_message(
            message(), "ana@sender.example", ["550-gone@example.com", "bob@example.com"]
        )
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    (dropped,) = snap.of_type("dropped")
    assert dropped["email"] == "550-gone@example.com" and dropped["reason"] == "Bounced Address"
    assert [t.rcpts for t in fake_mx.transactions][-1] == ("bob@example.com",)


def test_no_from_header_gets_one_from_the_envelope(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    raw = b"Subject: bare\r\n\r\nno From, no Date, no Message-ID\r\n"
    with client(node, key) as smtp:
        smtp.sendmail("ana@sender.example", ["bob@example.com"], raw)
        with pytest.raises(smtplib.SMTPDataError) as err:  # and no envelope sender either
            smtp.sendmail("", ["bob@example.com"], raw)
        assert err.value.smtp_code == 550
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    (got,) = fake_mx.transactions
    head = got.data[: got.data.index(b"\r\n\r\n")]
    assert b"From: ana@sender.example" in head
    assert b"Date: " in head and b"Message-ID: <" in head
    assert got.data.endswith(b"\r\n\r\nno From, no Date, no Message-ID\r\n")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (setup --peers)")
def test_swaks_starttls_auth_login(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, plaintext_auth_loopback=False)).start()
    key = node.create_key()
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{node.smtp_port}", "--tls", "--auth", "LOGIN",
         "--auth-user", "apikey", "--auth-password", key, "--from", "ana@sender.example",
         "--to", "bob@example.com", "--h-Subject", "via swaks", "--body", "swaks body"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "235 2.7.0" in done.stdout and "250 2.0.0 Ok: queued as" in done.stdout
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert b"swaks body" in fake_mx.transactions[0].data


def _plain(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _login_answer(challenge: bytes | None, password: str) -> str:
    return "apikey" if challenge in (None, b"Username:") else password


def raw_session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(1000)
    return sock


def test_relayed_message_in_messages_show_and_purge(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """The operator's commands read relayed messages too (purge once failed on them: the
    stored body is the message as received, not a request)."""
    from tests.integration.test_ops_cli import cli, cli_json

    cfg = relay_config(fake_mx.port)
    cfg["delivery"]["enabled"] = False
    node = node_factory(cfg).start()
    key = node.create_key()
    api = json.dumps({"category": ["ops"], "unique_args": {"ticket": "7"}})
    with client(node, key) as smtp:
        smtp.send_message(message(X_SMTPAPI=api), "ana@sender.example", ["bob@later.test"])
    (processed,) = spool_snapshot(node.data_dir).of_type("processed")
    shown = cli_json(node, "messages", "show", processed["sg_message_id"])
    assert shown["recipients"][0]["email"] == "bob@later.test", shown
    out = cli(node, "queue", "purge", "--domain", "later.test", "--yes")
    assert out.returncode == 0, out.stderr
    (dropped,) = spool_snapshot(node.data_dir).of_type("dropped")
    assert dropped["category"] == ["ops"] and dropped["ticket"] == "7"


def test_relay_metrics_and_a_failed_tls_handshake(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """/metrics counts the relay's connections, messages, refusals, failed AUTHs and TLS
    handshakes; a client that sends garbage after STARTTLS costs only its connection."""
    from postline.testing.scrape import scrape

    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    with client(node, key) as smtp:
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
        with pytest.raises(smtplib.SMTPDataError):
            smtp.send_message(message(X_SMTPAPI="{"), "ana@sender.example", ["bob@example.com"])
    with client(node) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login("apikey", "SG.wrong.key")
    sock = raw_session(node.smtp_port)
    sock.sendall(b"EHLO c\r\n")
    sock.recv(4096)
    sock.sendall(b"STARTTLS\r\n")
    assert sock.recv(4096).startswith(b"220 2.0.0")
    sock.sendall(b"this is not a TLS ClientHello\r\n" * 10)
    sock.settimeout(10)
    try:  # the node drops the connection (an alert first, or nothing)
        while sock.recv(4096):
            pass
    except ConnectionError:
        pass
    sock.close()
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    m = scrape(node.http_port)
    for _ in range(50):
        if m.get("smtp_tls_failures") == 1:
            break
        time.sleep(0.1)
        m = scrape(node.http_port)
    assert m["smtp_messages"] == 1 and m["smtp_messages_refused"] == 1, m
    # smtplib's login tries PLAIN, then LOGIN: two failed AUTHs
    assert m["smtp_auth_failures"] == 2 and m["smtp_tls_failures"] == 1, m
    assert m["smtp_connections_accepted"] == 3 and m["smtp_connections"] == 0, m
    with client(node, key) as smtp:  # the relay goes on
        smtp.send_message(message(), "ana@sender.example", ["carol@example.com"])
    wait_for(node, lambda s: len(s.of_type("delivered")) == 2)


def test_the_keys_tenant_owns_what_it_relays(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """As on the HTTP path: mail sent with a tenant's key is that tenant's (its events, its
    suppression lists); a trusted client without a key sends as the default tenant."""
    import sqlite3

    node = node_factory(relay_config(fake_mx.port, trusted_networks=["127.0.0.0/8"])).start()
    key = node.create_key(tenant="acme")
    with client(node, key) as smtp:
        smtp.send_message(message(), "ana@sender.example", ["bob@example.com"])
    with client(node) as smtp:  # trusted, no AUTH
        smtp.send_message(message(), "ana@sender.example", ["carol@example.com"])
    wait_for(node, lambda s: len(s.of_type("delivered")) == 2)
    db = sqlite3.connect(node.data_dir / "spool.db")
    try:
        rows = db.execute("SELECT DISTINCT tenant, email FROM events ORDER BY email").fetchall()
    finally:
        db.close()
    assert rows == [("acme", "bob@example.com"), ("default", "carol@example.com")]


def test_x_smtpapi_sections_and_send_each_at(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """Section tags filled per recipient (sub, then section, then sub again, as SendGrid
    does); send_each_at holds one recipient back while the other goes at once."""
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    later = int(time.time()) + 3600
    api = {
        "to": ["ann@example.com", "ben@example.com"],
        "sub": {"-greet-": ["-formal-", "-casual-"], "-name-": ["Ann", "Ben"]},
        "section": {"-formal-": "Dear -name-", "-casual-": "Hey -name-"},
        "send_each_at": [int(time.time()), later],
    }
    msg = EmailMessage()
    msg["From"] = "ana@sender.example"
    msg["Subject"] = "sections"
    msg["X-SMTPAPI"] = json.dumps(api)
    msg.set_content("-greet-, welcome.\n")
    with client(node, key) as smtp:
        smtp.send_message(msg, "ana@sender.example", ["ann@example.com"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    time.sleep(1.0)  # ben's is due in an hour: nothing more goes
    assert [t.rcpts for t in fake_mx.transactions] == [("ann@example.com",)]
    assert b"Dear Ann, welcome." in fake_mx.transactions[0].data
    processed = {e["email"]: e for e in snap.of_type("processed")}
    assert processed["ben@example.com"]["send_at"] == later
    assert spool_snapshot(node.data_dir).queued == 1
