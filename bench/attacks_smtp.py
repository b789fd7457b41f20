"""The SMTP relay's part of ``postline bench attacks``: what hostile or careless SMTP
clients cost a node (RSS and fds are printed by bench/attacks.py after each stage).

- ``idle``: connections that greet and then say nothing (each holds a slot until the
  command timeout);
- ``uploads``: 25 MB messages streamed at once by trusted clients (the relay spills each to
  a file and the spool copies it in 1 MiB chunks: memory must not grow with them);
- ``noop flood``: a client that pipelines 2,000,000 NOOPs and never reads its replies (the
  relay stops reading it once its unread replies pass 256 KiB);
- ``line flood``: a command "line" of 64 MB without CRLF (refused at 512 octets, the rest
  read and dropped).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

MB = 1024 * 1024
NOOPS = 2_000_000  # 11.4 MiB: more than the kernel's socket buffers hold


def greet(port: int, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    reply = sock.recv(512)
    if not reply.startswith(b"220"):
        raise RuntimeError(f"no greeting: {reply!r}")
    return sock


def idle(port: int, n: int) -> list[socket.socket]:
    return [greet(port) for _ in range(n)]


def _replies(sock: socket.socket, until: bytes) -> bytes:
    buf = b""
    while until not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def upload(port: int, size: int = 25 * MB) -> bytes:
    """One message of ``size`` octets; the final reply line."""
    with greet(port, timeout=120) as sock:
        sock.sendall(b"EHLO bench\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<b@example.com>\r\n")
        _replies(sock, b"250 2.1.5")
        sock.sendall(b"DATA\r\n")
        _replies(sock, b"354 ")
        line = b"x" * 76 + b"\r\n"
        block = b"From: a@sender.example\r\n\r\n" + line * (MB // len(line))
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += len(block)
            block = line * (MB // len(line))
        sock.sendall(b".\r\n")
        answer = _replies(sock, b"\r\n").strip().splitlines()[-1]
        sock.sendall(b"QUIT\r\n")
        return answer


def uploads(port: int, n: int, size: int = 25 * MB) -> list[bytes]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: upload(port, size), range(n)))


def noop_flood(port: int, count: int = NOOPS) -> int:
    """Pipeline ``count`` NOOPs without reading; the octets the node took before it stopped
    reading (the rest waits in the kernel)."""
    sock = greet(port)
    sock.setblocking(False)
    payload = b"NOOP\r\n" * count
    sent, deadline = 0, time.monotonic() + 10
    while sent < len(payload) and time.monotonic() < deadline:
        try:
            sent += sock.send(payload[sent : sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    sock.close()
    return sent


def line_flood(port: int, size: int = 64 * MB) -> bytes:
    """A command line of ``size`` octets without CRLF; the node's answer."""
    sock = greet(port)
    chunk = b"A" * MB
    try:
        for _ in range(size // MB):
            sock.sendall(chunk)
    except OSError:
        pass  # the node may close first
    sock.settimeout(10)
    try:
        return sock.recv(512).strip()
    except OSError:
        return b"(closed)"
    finally:
        sock.close()
