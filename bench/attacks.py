"""``postline bench attacks``: what hostile clients cost a node, in RSS and open fds.

Starts a node (delivery off) and prints its VmRSS and open file descriptors (/proc/<pid>):
at rest; holding 2,000 idle keep-alive connections; after header floods (200,000 repeated
header lines each); after unauthenticated 44 MB uploads (25 at once, the attack of issue 10
that held 1.23 GB); then the SMTP relay's attacks (bench/attacks_smtp.py): idle SMTP
connections, 25 MB messages streamed at once, a NOOP flood whose replies are never read, a
64 MB command line. The attack primitives are plain blocking sockets; the tests in
tests/integration/test_http_limits.py use them too.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import attacks_smtp as smtp
from postline.testing.node import NodeProcess

MB = 1024 * 1024
BAD_KEY = "SG.aaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse | None:
    """One response (a ``100 Continue`` counts as one); None if the peer closed first."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = _recv(sock)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        rest += chunk
    return RawResponse(int(lines[0].split()[1]), headers, rest[:length])


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def is_closed(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the peer closes the connection within ``timeout`` (data before EOF ignored)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def push(sock: socket.socket, data: bytes, timeout: float = 30.0) -> int:
    """Send ``data`` until the server answers, stops reading or closes; bytes sent."""
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + timeout
    while sent < len(view):
        readable, writable, _ = select.select(
            [sock], [sock], [], max(0, deadline - time.monotonic())
        )
        if readable or not writable:
            break
        try:
            sent += sock.send(view[sent : sent + 65536])
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


def header_flood(port: int, lines: int = 200_000, timeout: float = 10.0) -> RawResponse | None:
    """A request with ``lines`` repeated header lines (issue 10: 66 s of blocked loop)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * lines + b"\r\n"
    with connect(port, timeout=timeout) as sock:
        push(sock, head, timeout)
        return read_response(sock, timeout)


def upload_head(size: int, key: str | None, path: str = "/v3/mail/send", extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {size}\r\n{extra}\r\n"
    ).encode()


def big_upload(port: int, key: str | None = BAD_KEY, size: int = 44 * MB) -> tuple[int, int]:
    """An upload of ``size`` bytes; (status or 0, body bytes the server took before answering)."""
    with connect(port, timeout=30) as sock:
        sock.sendall(upload_head(size, key))
        sent = push(sock, b"x" * size, timeout=30)
        resp = read_response(sock, timeout=30)
        return (resp.status if resp else 0), sent


def idle_connections(port: int, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections, each after one served request."""
    socks = []
    for _ in range(n):
        sock = connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock)
        socks.append(sock)
    return socks


def flood_unread(port: int, chunk: bytes, offered: int, stall: float = 5.0) -> int:
    """Send ``chunk`` again and again (pipelined requests or commands) and never read an
    answer, until ``offered`` bytes are sent or the server has not read for ``stall``
    seconds; the bytes sent. The client's receive buffer is small, so unread answers back
    up into the server at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sent, stalled = 0, 0.0
    try:
        while sent < offered and stalled < stall:
            try:
                sent += sock.send(chunk)
                stalled = 0.0
            except BlockingIOError:
                time.sleep(0.1)
                stalled += 0.1
    finally:
        sock.close()
    return sent


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _figures(label: str, pid: int) -> None:
    print(f"  {label:<48} RSS {rss_mib(pid):7.1f} MiB   fds {fd_count(pid):5d}", flush=True)


def _timed(what: str, fn: Any) -> Any:
    start = time.perf_counter()
    out = fn()
    print(f"  {what}: {time.perf_counter() - start:.2f} s", flush=True)
    return out


@dataclass
class Options:
    idle: int
    floods: int
    flood_lines: int
    uploads: int
    legacy: bool
    smtp_idle: int = 500
    smtp_uploads: int = 10


def run(base: Path, opts: Options) -> None:
    http: dict[str, Any] = {}
    if not opts.legacy:  # a node from before the limits existed rejects unknown keys
        http = {"max_connections": opts.idle + 512, "max_connections_per_ip": opts.idle + 512}
    relay = {
        "trusted_networks": ["127.0.0.0/8"],
        "max_connections": opts.smtp_idle + 64,
        "max_connections_per_ip": opts.smtp_idle + 64,
    }
    cfg = {"delivery": {"enabled": False}, "http": http}
    if not opts.legacy:
        cfg["smtp"] = relay
    node = NodeProcess(base, cfg)
    node.start()
    assert node.proc is not None
    pid, port = node.proc.pid, node.http_port
    try:
        _figures("at rest", pid)
        for stage in _stages(port, opts):
            _figures(stage, pid)
        if node.smtp_ports and not opts.legacy:
            for stage in _smtp_stages(node.smtp_ports[0], opts):
                _figures(stage, pid)
            print(f"  peak RSS of the node (VmHWM): {peak_mib(pid):.1f} MiB", flush=True)
    finally:
        node.stop()


def peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _smtp_stages(port: int, opts: Options) -> Iterator[str]:
    n = opts.smtp_idle
    socks = _timed(f"open {n} idle SMTP connections", lambda: smtp.idle(port, n))
    yield f"{n} idle SMTP connections"
    for s in socks:
        s.close()
    time.sleep(0.5)
    yield "idle SMTP connections closed"
    k = opts.smtp_uploads
    answers = _timed(f"{k} messages of 25 MB at once", lambda: smtp.uploads(port, k))
    codes = sorted({a[:3].decode(errors="replace") for a in answers})
    print(f"    answers: {len(answers)} x {codes}")
    yield f"after {k} x 25 MB messages (RSS now; peak below)"
    taken = _timed("NOOP flood, replies never read", lambda: smtp.noop_flood(port))
    print(
        f"    {taken / MB:.1f} MiB of {smtp.NOOPS * 6 / MB:.1f} MiB of NOOPs went out before "
        "the client's socket filled: the node stopped reading it"
    )
    yield "after a NOOP flood"
    answer = _timed("64 MB command line", lambda: smtp.line_flood(port))
    print(f"    answer: {answer.decode(errors='replace')[:60]}")
    yield "after a 64 MB command line"


def _stages(port: int, opts: Options) -> Iterator[str]:
    socks = _timed(f"open {opts.idle} idle connections", lambda: idle_connections(port, opts.idle))
    yield f"{opts.idle} idle keep-alive connections"
    for s in socks:
        s.close()
    time.sleep(0.5)
    yield "idle connections closed"
    for _ in range(opts.floods):
        resp = _timed(
            f"header flood ({opts.flood_lines} lines)",
            lambda: header_flood(port, opts.flood_lines, 300),
        )
        print(f"    answer: {resp.status if resp else 'connection closed'}")
    yield f"after {opts.floods} header floods"
    with ThreadPoolExecutor(opts.uploads) as pool:
        results = _timed(
            f"{opts.uploads} unauthenticated 44 MB uploads at once",
            lambda: list(pool.map(lambda _: big_upload(port), range(opts.uploads))),
        )
    statuses = sorted({r[0] for r in results})
    taken = max(r[1] for r in results) / MB
    print(f"    answers {statuses}; at most {taken:.1f} MiB of a body sent before the answer")
    yield f"after {opts.uploads} unauthenticated 44 MB uploads"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench attacks", description=__doc__)
    ap.add_argument("--idle", type=int, default=2000, help="idle keep-alive connections")
    ap.add_argument("--floods", type=int, default=5, help="header-flood requests")
    ap.add_argument("--flood-lines", type=int, default=200_000, help="header lines per flood")
    ap.add_argument("--uploads", type=int, default=25, help="concurrent 44 MB uploads")
    ap.add_argument("--legacy", action="store_true", help="no [http] limit keys (older nodes)")
    ap.add_argument("--smtp-idle", type=int, default=500, help="idle SMTP connections")
    ap.add_argument("--smtp-uploads", type=int, default=10, help="concurrent 25 MB messages")
    args = ap.parse_args(argv)
    opts = Options(
        args.idle, args.floods, args.flood_lines, args.uploads, args.legacy,
        args.smtp_idle, args.smtp_uploads,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pl-attacks-", dir=".") as tmp:
        run(Path(tmp), opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
