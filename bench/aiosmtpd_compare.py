"""``postline bench smtp-protocol``: Postline's sans-I/O SMTP server against aiosmtpd.

Issue 13: "measure aiosmtpd against it and keep the faster one". Each server runs alone in
a subprocess of its own (``python -m bench.aiosmtpd_compare --serve KIND``) on uvloop, as
``postline serve`` does, on a free loopback port; both trust the client (no AUTH, no TLS),
count each message and discard it (no spool, no delivery), so the figure is the protocol
alone:

- ``aiosmtpd``: ``aiosmtpd.smtp.SMTP`` with a handler whose ``handle_DATA`` counts;
- ``postline``: :class:`SansIoAdapter`, a minimal asyncio protocol around
  :class:`postline.smtp.protocol.ServerProtocol` (``trusted=True``) that discards the
  DataChunk events and answers each MessageComplete with ``accept_message`` at once.

The load is the SMTP bench's: ``smtp-source -d -s 20 -m 20000 -l 2048`` (it waits for each
reply, so its exit means every message was answered). Runs alternate between the servers
(A B A B ...) so drift on the shared machine falls on both; each run prints messages/s
(smtp-source start to exit) and the server process's CPU-seconds per million messages
(utime + stime from /proc, start-up excluded); the medians and the ratio come last.

Measured on the 2-core box, quiet, defaults (two sessions of 3 runs each): postline
13,150-15,170 msg/s and 64-72 CPU-s per million messages, aiosmtpd 3,040-3,340 msg/s and
296-322: the sans-I/O machine is 4.3-4.5x faster for 4.5-4.7x less CPU, so the relay keeps
it (issue 13: "keep the faster one").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from postline.smtp.events import CloseConnection, MessageComplete, SessionPolicy
from postline.smtp.protocol import ServerProtocol

KINDS = ("postline", "aiosmtpd")
ROOT = Path(__file__).resolve().parents[1]


# -- the servers (in their own process) -----------------------------------------------------


class Counter:
    messages = 0


class SansIoAdapter(asyncio.Protocol):
    """One connection: bytes in → ServerProtocol → bytes out; messages counted, discarded."""

    policy = SessionPolicy(hostname="bench.postline", trusted=True, auth_enabled=False)

    def __init__(self, counter: type[Counter]) -> None:
        self.counter = counter
        self.proto = ServerProtocol(self.policy)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.proto.bytes_to_send())

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self.proto.receive_eof()
        self._pump()
        return False

    def _pump(self) -> None:
        proto, close = self.proto, False
        while (event := proto.next_event()) is not None:
            if isinstance(event, MessageComplete):
                self.counter.messages += 1
                proto.accept_message(f"B{self.counter.messages:X}")
            elif isinstance(event, CloseConnection):
                close = True
        assert self.transport is not None
        if out := proto.bytes_to_send():
            self.transport.write(out)
        if close:
            self.transport.close()


class CountingHandler:
    """aiosmtpd handler: count and discard."""

    def __init__(self, counter: type[Counter]) -> None:
        self.counter = counter

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.counter.messages += 1
        return f"250 2.0.0 Ok: queued as B{self.counter.messages:X}"


async def serve(kind: str) -> None:
    """Listen on a free loopback port, print it, run until SIGTERM, print the count."""
    loop = asyncio.get_running_loop()
    if kind == "postline":
        server = await loop.create_server(lambda: SansIoAdapter(Counter), "127.0.0.1", 0)
    else:
        from aiosmtpd.smtp import SMTP

        handler = CountingHandler(Counter)
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="bench.aiosmtpd", loop=loop), "127.0.0.1", 0
        )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    print(f"messages {Counter.messages}", flush=True)


# -- the runs (in the parent) ------------------------------------------------------------------


@dataclass
class ProtoRun:
    kind: str
    messages: int  # answered by the server (its own count)
    seconds: float
    cpu_seconds: float
    source_status: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds / self.messages * 1e6 if self.messages else 0.0

    def line(self) -> str:
        return (
            f"  {self.kind:<10} {self.messages:>8} msgs {self.seconds:7.2f} s "
            f"{self.rate:9.0f} msg/s  {self.cpu_per_million:8.0f} CPU-s/M msgs (server)"
        )


def run_one(kind: str, messages: int, sessions: int, size: int) -> ProtoRun:
    from bench.sink import proc_cpu_seconds
    from bench.smtp_relay import Source

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.aiosmtpd_compare", "--serve", kind],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        first = server.stdout.readline().split()
        if first[:1] != ["port"]:
            raise RuntimeError(f"{kind} server did not start (said {first!r})")
        cpu0 = proc_cpu_seconds(server.pid)
        t0 = time.monotonic()
        source = Source(int(first[1]), messages, sessions, size)
        source.proc.wait(timeout=60 + messages / 20)
        seconds = time.monotonic() - t0
        cpu = proc_cpu_seconds(server.pid) - cpu0
        status, err = source.finish()
        if status:
            print(f"  smtp-source status {status}: {err.strip()}", flush=True)
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
        counted = int(out.split()[-1]) if out.startswith("messages") else 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return ProtoRun(kind, counted, seconds, cpu, status)


def summary(runs: list[ProtoRun]) -> list[str]:
    lines = []
    med: dict[str, tuple[float, float]] = {}
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        if mine:
            med[kind] = (
                statistics.median(r.rate for r in mine),
                statistics.median(r.cpu_per_million for r in mine),
            )
            rate, cpu = med[kind]
            lines.append(f"{kind:<10} median of {len(mine)}: {rate:9.0f} msg/s  {cpu:8.0f} CPU-s/M")
    if len(med) == 2:
        (pr, pc), (ar, ac) = med["postline"], med["aiosmtpd"]
        # CPU is read in clock ticks (10 ms): a short run can read 0 for a server
        less = f"{ac / pc:.2f}x less CPU per message" if pc else "CPU too small to compare"
        lines.append(f"ratio postline / aiosmtpd: {pr / ar:.2f}x throughput, {less}")
    return lines


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench smtp-protocol", description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000, help="messages per run")
    ap.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    ap.add_argument("--size", type=int, default=2048, help="message payload bytes (-l)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each server, alternating")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)  # the server process
    args = ap.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve))
        return 0
    print(
        f"smtp-source -d -s {args.sessions} -m {args.messages} -l {args.size} into each "
        f"server, {args.runs} runs each, alternating",
        flush=True,
    )
    runs: list[ProtoRun] = []
    for i in range(args.runs):
        for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
            runs.append(run_one(kind, args.messages, args.sessions, args.size))
            print(f"run {i + 1}" + runs[-1].line(), flush=True)
    for line in summary(runs):
        print(line, flush=True)
    ok = all(r.messages == args.messages and r.source_status == 0 for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
