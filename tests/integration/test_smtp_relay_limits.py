"""The SMTP relay at its bounds: size, connections, timeouts, failed AUTH, smuggling, a
full disk, kill -9 after 250, and a 25 MB message streamed (memory measured in the node)."""

from __future__ import annotations

import contextlib
import os
import smtplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from bench.attacks import flood_unread
from tests.conftest import spool_snapshot
from tests.integration.test_delivery import wait_for
from tests.integration.test_smtp_relay import message, relay_config

from postline.testing.fake_smtp import FakeSmtpServer

TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}


def _recv_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _session(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _recv_reply(sock).startswith(b"220")
    return sock


def test_size_limit_declared_and_undeclared(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, max_message_size=100_000, **TRUSTED)).start()
    big = message()
    big.set_content("x" * 150_000)
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        smtp.ehlo("c.example")
        assert smtp.esmtp_features["size"] == "100000"
        with pytest.raises(smtplib.SMTPSenderRefused) as err:  # smtplib declares SIZE=
            smtp.send_message(big, "ana@sender.example", ["bob@example.com"])
        assert err.value.smtp_code == 552
    sock = _session(node.smtp_port)  # no SIZE= : refused at the end of DATA
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
    replies = b""
    while b"\r\n354 " not in replies:  # EHLO's lines, MAIL, RCPT, then 354
        replies += sock.recv(4096)
    assert b"354" in replies
    sock.sendall(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 150 + b".\r\n")
    assert _recv_reply(sock).startswith(b"552 5.3.4")
    sock.close()
    assert spool_snapshot(node.data_dir).events == []


def test_connection_caps_per_address(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, max_connections_per_ip=2)).start()
    first, second = _session(node.smtp_port), _session(node.smtp_port)
    third = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10)
    assert _recv_reply(third).startswith(b"421 4.7.0 Too many connections")
    assert third.recv(100) == b""  # closed
    first.close()
    time.sleep(0.2)
    again = _session(node.smtp_port)  # a slot was freed
    for s in (second, third, again):
        s.close()


def test_idle_client_is_timed_out(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    node = node_factory(relay_config(fake_mx.port, command_timeout="1s")).start()
    sock = _session(node.smtp_port)
    sock.sendall(b"EHLO c\r\n")
    assert _recv_reply(sock).startswith(b"250")
    sock.settimeout(10)
    assert _recv_reply(sock).startswith(b"421 4.4.2")
    assert sock.recv(100) == b""
    sock.close()


def test_failed_auth_bans_the_address(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = relay_config(fake_mx.port, auth_fail_limit=100, auth_fail_ban=3, auth_ban_time="1h")
    node = node_factory(cfg).start()
    key = node.create_key()
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("apikey", "SG.not.a-key")
        with pytest.raises(smtplib.SMTPException):  # the third: 535, then 421 and close
            smtp.login("apikey", "SG.not.a-key")
    sock = socket.create_connection(("127.0.0.1", node.smtp_port), timeout=10)
    assert _recv_reply(sock).startswith(b"421 4.7.0 Too many failed authentications")
    sock.close()
    with pytest.raises(smtplib.SMTPConnectError):  # even with the right key, for a while
        smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10).login("apikey", key)


@pytest.mark.parametrize(
    "probe",
    [
        b"\n.\r\n",  # bare LF before the dot (Postfix CVE-2023-51764)
        b"\r.\r\n",  # bare CR before the dot
        b"\r\n.\n",  # bare LF after the dot
        b"\n.\n",
    ],
)
def test_smuggling_never_makes_a_second_message(
    node_factory: Any, fake_mx: FakeSmtpServer, probe: bytes
) -> None:
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    sock = _session(node.smtp_port)
    smuggled = (
        b"MAIL FROM:<boss@sender.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
        b"From: boss@sender.example\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
    )
    sock.sendall(
        b"EHLO c\r\nMAIL FROM:<ana@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        b"From: ana@sender.example\r\nSubject: outer\r\n\r\nouter" + probe + smuggled + b".\r\n"
    )
    time.sleep(0.5)
    sock.sendall(  # the session goes on: a proper message afterwards is taken
        b"MAIL FROM:<ana@sender.example>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n"
        b"From: ana@sender.example\r\nSubject: next\r\n\r\nnext\r\n.\r\nQUIT\r\n"
    )
    replies = b""
    while b"221" not in replies:
        chunk = sock.recv(65536)
        if not chunk:
            break
        replies += chunk
    sock.close()
    assert b"554 5.5.2" in replies, replies  # the message with the bare newline refused
    wait_for(node, lambda s: len(s.of_type("delivered")) >= 1)
    time.sleep(0.5)
    rcpts = [r for t in fake_mx.transactions for r in t.rcpts]
    assert rcpts == ["carol@example.com"], rcpts
    assert all(b"smuggled" not in t.data for t in fake_mx.transactions)


def test_kill_9_right_after_250_loses_nothing(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = relay_config(fake_mx.port, **TRUSTED)
    cfg["delivery"]["enabled"] = False  # nothing leaves before the kill
    node = node_factory(cfg).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        for i in range(5):
            smtp.send_message(message(), "ana@sender.example", [f"r{i}@example.com"])
    node.kill()
    node.config["delivery"]["enabled"] = True
    import tomli_w

    node.config_path.write_text(tomli_w.dumps(node.config))
    node.start()
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 5)
    assert len(snap.of_type("delivered")) == 5, node.log_tail()
    assert sorted(r for t in fake_mx.transactions for r in t.rcpts) == [
        f"r{i}@example.com" for i in range(5)
    ]


def test_full_disk_is_452_and_keeps_nothing(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """More free space required than any disk has: the spool's admission refuses (the same
    statvfs path that a filling disk takes, see test_disk_full.py)."""
    cfg = relay_config(fake_mx.port, **TRUSTED)
    cfg["spool"] = {"min_free_bytes": 1 << 50, "reserve_bytes": 0}
    node = node_factory(cfg).start()
    big = message()
    big.add_attachment(os.urandom(400_000), maintype="application", subtype="octet-stream")
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        for m in (message(), big):  # in memory, and spilled to a file while it arrived
            with pytest.raises(smtplib.SMTPDataError) as err:
                smtp.send_message(m, "ana@sender.example", ["bob@example.com"])
            assert err.value.smtp_code == 452, err.value
    snap = spool_snapshot(node.data_dir)
    assert snap.events == [] and snap.messages == 0 and snap.bodies == 0
    assert list((node.data_dir / "incoming").iterdir()) == []


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _relay_worker(node_pid: int) -> int:
    """The node's SMTP relay worker (started by the first connection)."""
    for _ in range(100):
        kids = Path(f"/proc/{node_pid}/task/{node_pid}/children").read_text().split()
        for kid in kids:
            with contextlib.suppress(OSError):
                if b"postline.smtp.worker" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    return int(kid)
        time.sleep(0.05)
    raise AssertionError("no relay worker")


def test_25mb_attachment_byte_for_byte_with_bounded_memory(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    assert node.proc is not None
    msg = EmailMessage()
    msg["From"] = "ana@sender.example"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "big"
    msg["Date"] = "Fri, 27 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = "<big@sender.example>"  # nothing to add: only Received goes in front
    msg.set_content("see attached\n")
    payload = os.urandom(18 * 1024 * 1024)  # base64: ~24.3 MB on the wire
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="a.bin")
    raw = msg.as_bytes().replace(b"\n", b"\r\n")
    assert 24_000_000 < len(raw) < 26_500_000
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=60) as smtp:
        smtp.noop()  # the relay worker has started: it speaks SMTP, the node stores
    worker = _relay_worker(node.proc.pid)
    time.sleep(0.5)  # the node settles after start
    pids = (node.proc.pid, worker)
    before = sum(_vm(pid, "VmRSS") for pid in pids)
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=60) as smtp:
        smtp.sendmail("ana@sender.example", ["bob@example.com"], raw)
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1, timeout=60)
    assert len(snap.of_type("delivered")) == 1, node.log_tail()
    peak = sum(_vm(pid, "VmHWM") for pid in pids)  # both peaks, as if they were at once
    (got,) = fake_mx.transactions
    assert got.data.endswith(raw)  # byte for byte, after the Received field
    growth = peak - before
    print(
        f"25 MB relay: message {len(raw) / 1e6:.1f} MB, "
        f"node + relay worker peak RSS growth {growth / 1e6:.1f} MB"
    )
    assert growth < 2 * len(raw), f"peak RSS grew {growth / 1e6:.1f} MB for {len(raw) / 1e6} MB"


def test_recipients_and_messages_per_connection(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    cfg = relay_config(fake_mx.port, max_recipients=2, max_messages_per_connection=2, **TRUSTED)
    node = node_factory(cfg).start()
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        rcpts = ["a@example.com", "b@example.com", "c@example.com"]
        refused = smtp.send_message(message(), "ana@sender.example", rcpts)
        assert refused == {"c@example.com": (452, b"4.5.3 Too many recipients; send the rest "
                                                  b"in another message")}  # fmt: skip
        smtp.send_message(message(), "ana@sender.example", ["c@example.com"])
        with pytest.raises(smtplib.SMTPSenderRefused) as err:  # 421 after the second 250
            smtp.send_message(message(), "ana@sender.example", ["d@example.com"])
        assert err.value.smtp_code == 421
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 3)
    assert sorted(e["email"] for e in snap.of_type("delivered")) == rcpts


def test_a_line_over_998_octets_is_refused_at_the_door(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """Refused with 554 rather than taken and bounced later (KumoMTA's hard limit too)."""
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    head = b"From: ana@sender.example\r\nSubject: long\r\n\r\n"
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.sendmail("ana@sender.example", ["a@example.com"], head + b"x" * 999 + b"\r\n")
        assert err.value.smtp_code == 554 and b"998" in err.value.smtp_error
        smtp.sendmail("ana@sender.example", ["b@example.com"], head + b"x" * 998 + b"\r\n")
    wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert [t.rcpts for t in fake_mx.transactions] == [("b@example.com",)]
    assert fake_mx.transactions[0].data.endswith(b"x" * 998 + b"\r\n")


def test_a_client_gone_mid_data_leaves_nothing(node_factory: Any, fake_mx: FakeSmtpServer) -> None:
    """A large message cut off mid-DATA: its spill file is removed, nothing is stored, and
    the node goes on taking mail."""
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    sock = _session(node.smtp_port)
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
    replies = b""
    while b"\r\n354 " not in replies:
        replies += sock.recv(4096)
    sock.sendall(b"From: a@sender.example\r\n\r\n" + (b"z" * 76 + b"\r\n") * 20_000)  # 1.5 MB
    incoming = node.data_dir / "incoming"
    deadline = time.monotonic() + 10
    while not list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(incoming.iterdir()), "the message should be spilling to a file"
    sock.close()
    deadline = time.monotonic() + 10
    while list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(incoming.iterdir()) == []
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        smtp.send_message(message(), "ana@sender.example", ["carol@example.com"])
    snap = wait_for(node, lambda s: len(s.of_type("delivered")) == 1)
    assert [e["email"] for e in snap.events if e["event"] == "processed"] == ["carol@example.com"]


def test_a_client_that_never_reads_its_replies_is_not_read_either(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    """Pipelined NOOPs, no reply ever read: the relay stops reading once its unsent replies
    pass the transport's high-water mark, so the flood waits in the kernel's buffers and
    the client's send blocks; the relay worker's memory does not follow the flood."""
    node = node_factory(relay_config(fake_mx.port, **TRUSTED)).start()
    assert node.proc is not None
    with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=10) as smtp:
        smtp.noop()  # the relay worker has started
    worker = _relay_worker(node.proc.pid)
    before = _vm(worker, "VmRSS")
    offered = 64 * 1024 * 1024  # each NOOP (6 bytes) earns a reply of ~20 bytes
    sent = flood_unread(node.smtp_port, b"NOOP\r\n" * 100_000, offered)
    grew = _vm(worker, "VmHWM") - before
    print(f"never-reading client: {sent / 1e6:.1f} MB sent of {offered / 1e6:.0f} MB offered, "
          f"relay worker peak RSS +{grew / 1e6:.1f} MB")  # fmt: skip
    # measured: 6.9 MB sent (the kernel's buffers), +6.3-6.9 MB; with pause_writing made a
    # no-op, 15.7-17.5 MB sent and +25-29 MB (the replies held in the worker)
    assert sent < offered, "the relay read a 64 MB flood whose replies nobody read"
    assert grew < 16 * 1024 * 1024, f"relay worker grew {grew / 1e6:.1f} MB"
