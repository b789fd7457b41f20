"""SMTP client throughput against Postfix's smtp-sink, ours beside the peers.

    .venv/bin/python bench/smtp_client.py [--messages 20000] [--connections 8] [--size 2048]

Starts ``smtp-sink`` on a free loopback port, then sends N messages of SIZE bytes over K
concurrent reused connections with, in turn: Postline's client (uvloop), the same on the
default asyncio loop, aiosmtplib (uvloop; skipped with a note when not installed) and
Postfix's own ``smtp-source`` (C, lock-step, no pipelining). Prints messages per second.
The client, the peers and the sink share the machine, so figures are relative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import closing, suppress
from typing import Any

import uvloop

from postline.deliver.connection import open_connection

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = shutil.which("smtp-sink", path=SBIN)
    if sink is None:
        sys.exit("smtp-sink not found: run scripts/setup (Debian package postfix)")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    proc = subprocess.Popen([sink, *user, "-m", "1000", f"127.0.0.1:{port}", "1000"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with closing(socket.socket()) as s, suppress(OSError):
            s.connect(("127.0.0.1", port))
            return proc
        time.sleep(0.02)
    proc.kill()
    sys.exit("smtp-sink did not start")


def message(size: int) -> bytes:
    head = b"From: a@bench.test\r\nTo: b@sink.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[:size]


async def run_ours(port: int, n: int, k: int, data: bytes) -> int:
    async def worker(count: int) -> int:
        conn = await open_connection(
            "127.0.0.1",
            port,
            helo="bench.test",
            connect_timeout=5,
            command_timeout=10,
            data_timeout=30,
        )
        ok = 0
        for _ in range(count):
            tx = await conn.send("a@bench.test", ["b@sink.test"], data)
            ok += len(tx.delivered)
        await conn.quit()
        return ok

    return sum(await asyncio.gather(*(worker(c) for c in split(n, k))))


async def run_aiosmtplib(port: int, n: int, k: int, data: bytes) -> int:
    import aiosmtplib

    async def worker(count: int) -> int:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        ok = 0
        for _ in range(count):
            errors, _ = await client.sendmail("a@bench.test", ["b@sink.test"], data)
            ok += 1 - len(errors)
        await client.quit()
        return ok

    return sum(await asyncio.gather(*(worker(c) for c in split(n, k))))


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def timed(
    label: str, runner: Callable[[], Coroutine[Any, Any, int]], n: int, use_uvloop: bool = True
) -> None:
    start = time.perf_counter()
    ok: int = uvloop.run(runner()) if use_uvloop else asyncio.run(runner())
    elapsed = time.perf_counter() - start
    note = "" if ok == n else f"  ({ok} of {n} accepted)"
    print(f"{label:<34} {n / elapsed:>9,.0f} msg/s  {elapsed:6.2f} s{note}")


def run_smtp_source(port: int, n: int, k: int, size: int) -> None:
    source = shutil.which("smtp-source", path=SBIN)
    if source is None:
        print("smtp-source                        not found, skipped")
        return
    cmd = [source, "-d", "-s", str(k), "-m", str(n), "-l", str(size), "-M", "bench.test"]
    start = time.perf_counter()
    subprocess.run([*cmd, f"127.0.0.1:{port}"], check=True)
    elapsed = time.perf_counter() - start
    print(f"{'smtp-source (Postfix, C)':<34} {n / elapsed:>9,.0f} msg/s  {elapsed:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    args = ap.parse_args()
    n, k, data = args.messages, args.connections, message(args.size)
    port = free_port()
    sink = start_sink(port)
    print(f"{n} messages of {len(data)} bytes over {k} connections to smtp-sink :{port}")
    try:
        timed("postline (uvloop)", lambda: run_ours(port, n, k, data), n)
        timed("postline (asyncio)", lambda: run_ours(port, n, k, data), n, use_uvloop=False)
        try:
            import aiosmtplib  # noqa: F401
        except ImportError:
            print("aiosmtplib                         not installed, skipped")
        else:
            timed("aiosmtplib (uvloop)", lambda: run_aiosmtplib(port, n, k, data), n)
        run_smtp_source(port, n, k, args.size)
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
