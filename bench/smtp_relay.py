"""``postline bench smtp``: SMTP in, SMTP out, Postline beside Postfix on the same load.

Both sides get the same injection, ``smtp-source -d -s SESSIONS -m MESSAGES -l SIZE``
(``-d``: each of the SESSIONS parallel sessions sends its share over one connection;
``-c``: a running count of completed DATA commands, read for the progress lines), and
relay every message to a ``smtp-sink`` on loopback (:mod:`bench.sink`):

- Postline: a ``postline serve`` process (its own data_dir in a temporary directory under
  the working directory) with ``[smtp] listen`` on a free loopback port, ``trusted_networks
  = ["127.0.0.0/8"]`` (relaying without AUTH, as Postfix's ``mynetworks``), every route to
  the sink (``[delivery] routes = {"*" = ...}``), 20 connections to it (Postfix's
  ``default_destination_concurrency_limit``) and logging at info, as deployed.
- Postfix: a private instance relaying to its own sink (:mod:`bench.postfix_peer`).

The clock runs from the start of smtp-source until the sink has every message. CPU is the
utime + stime (all threads) from /proc over the same span of the node process and of its
workers (the SMTP relay's, the event pipeline's), each printed beside; memory is the
node's peak RSS (VmHWM), the workers' printed beside. Postfix's figures are the sums over
its ~40 processes (PSS beside RSS; see bench/postfix_peer.py). Target (issue 13): Postline
>= 3x Postfix.

First figures (the relay as first wired, ac02cf9; four runs on a quiet box): Postline
1,590-1,735 msg/s, 579-676 CPU-s per million; Postfix 591-852 msg/s: 2.0-2.9x, short of 3x.
Now (2026-11-28, eight runs of 20,000 messages with Postfix in the same run): Postline
3,230-3,776 msg/s, 351-409 CPU-s per million, ~70 MB peak RSS (the relay worker 30 MB
beside); Postfix 607-947 msg/s, 1,522-2,450 CPU-s per million, ~620 MB RSS summed:
3.75-6.08x the throughput (3.75x in the run where Postfix reached 947), 4.0-6.7x less CPU.
The machine's speed moves from day to day for both (another day: Postline 2,300-2,770,
Postfix 586-760, 3.0-4.6x); compare within one run. Where
the time goes, CPU microseconds a message (py-spy and /proc, 2026-11-28): the node's event
loop ~125 (accepting ~40, delivering ~85, most of it in uvloop's socket calls), its writer
and reader threads ~80, the relay worker ~110 (two thirds in socket calls), the event
pipeline ~27, smtp-source + smtp-sink ~70: ~1.7 of the 2 cores busy and no stage
saturated, so the rate follows the CPU a message costs (fsync off: +5%).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.e2e import RunResult
from bench.procstat import children, command_name, peak_rss_mb
from bench.sink import (
    CLK_TCK,
    SmtpSink,
    find_tool,
    finish_source,
    free_port,
    proc_cpu_seconds,
    wait_greeting,
)
from postline.testing.node import NodeProcess

SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"
STALL_SECONDS = 15.0  # smtp-source is done and the sink has not moved for this long: give up

Say = Callable[[str], None]


# -- the injector -------------------------------------------------------------------------


class Source:
    """``smtp-source -c -d -s S -m M -l L`` at ``host:port``; :attr:`sent` counts the DATA
    commands completed so far (its ``-c`` counter, read from stdout by a thread)."""

    def __init__(
        self, port: int, messages: int, sessions: int, size: int, host: str = "127.0.0.1"
    ) -> None:
        self.argv = [
            find_tool("smtp-source"), "-c", "-d", "-s", str(sessions), "-m", str(messages),
            "-l", str(size), "-f", SENDER, "-t", RECIPIENT, f"{host}:{port}",
        ]  # fmt: skip
        self.sent = 0
        # Closed in finish(); a file, not a pipe, so an error flood can never block it.
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err
        )
        self._reader = threading.Thread(target=self._read, name="smtp-source-c", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            pending += chunk
            *records, pending = pending.split(b"\r")
            for rec in reversed(records):
                if rec.strip().isdigit():
                    self.sent = int(rec)
                    break

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish(self, grace: float = 10.0) -> tuple[int, str]:
        """Its exit status and the tail of its stderr, killing it when it has not exited
        within ``grace`` seconds (the sink can hold every message before smtp-source has
        read its last replies and sent QUIT)."""
        status = finish_source(self.proc, grace)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._err.seek(0)
        err = self._err.read().decode(errors="replace")[-2000:]
        self._err.close()
        return status, err


# -- the Postline side ----------------------------------------------------------------------


@dataclass
class RelayRun:
    result: RunResult  # messages = what the sink counted
    asked: int  # messages smtp-source was asked to send
    inject_seconds: float  # until smtp-source exited
    source_status: int
    source_stderr: str
    main_cpu_seconds: float = 0.0  # the node's event-loop thread alone (the rest: threads)
    source_cpu_seconds: float = 0.0  # smtp-source (the load), beside the node on the 2 cores
    sink_cpu_seconds: float = 0.0
    workers: dict[str, tuple[float, float]] | None = None  # name → (CPU s, peak RSS MB)

    @property
    def complete(self) -> bool:
        return self.result.messages >= self.asked and self.source_status == 0


def node_config(
    smtp_port: int, sink_port: int, per_session: int, log_level: str, relay_worker: bool = True
) -> dict[str, Any]:
    return {
        "smtp": {
            "worker": relay_worker,
            "listen": f"127.0.0.1:{smtp_port}",
            "trusted_networks": ["127.0.0.0/8"],
            # Postfix's smtpd has no per-connection message limit: never hit it here.
            "max_messages_per_connection": max(5000, per_session + 1),
        },
        "delivery": {
            "routes": {"*": f"127.0.0.1:{sink_port}"},
            "shaping": {"max_connections": 20, "max_messages_per_connection": 1000},
        },
        "log": {"level": log_level},
    }


def start_node(
    workdir: Path, sink_port: int, per_session: int, log_level: str, relay_worker: bool = True
) -> tuple[NodeProcess, int]:
    """A node whose SMTP listener answers on a free loopback port, and that port."""
    for _ in range(5):
        port = free_port()
        cfg = node_config(port, sink_port, per_session, log_level, relay_worker)
        node = NodeProcess(workdir, cfg)
        try:
            node.start()
        except RuntimeError as exc:  # it exited: lost the free port to someone else?
            if "in use" in str(exc):
                continue
            raise
        if wait_greeting(port, proc=node.proc):
            return node, port
        tail = node.log_tail(2000)
        node.stop()
        if "in use" not in tail:
            raise RuntimeError(
                f"the node does not answer SMTP on 127.0.0.1:{port} (is the relay listener "
                f"wired into `postline serve`?); node log tail:\n{tail}"
            )
    raise RuntimeError("no free port for the node's SMTP listener after 5 tries")


def run_postline(
    messages: int,
    sessions: int,
    size: int,
    workdir: Path,
    say: Say,
    log_level: str = "info",
    relay_worker: bool = True,
) -> RelayRun:
    limit = 60.0 + messages / 50.0
    with SmtpSink() as sink:
        per_session = -(-messages // sessions)
        node, port = start_node(workdir, sink.port, per_session, log_level, relay_worker)
        try:
            assert node.proc is not None
            pid = node.proc.pid
            say(f"  node pid {pid}, SMTP on 127.0.0.1:{port}, smtp-sink on 127.0.0.1:{sink.port}")
            time.sleep(0.5)  # the workers (SMTP relay, event pipeline) finish starting
            cpu0, main0 = proc_cpu_seconds(pid, children=True), main_thread_cpu(pid)
            kids0 = {c: proc_cpu_seconds(c) for c in children(pid)}
            sink0, ru0 = sink.cpu_seconds(), _children_cpu()
            t0 = time.monotonic()
            source = Source(port, messages, sessions, size)
            say("  " + " ".join(source.argv))
            try:
                inject, end = wait_delivered(sink, source, messages, t0, limit, say)
            finally:
                status, err = source.finish()
            cpu = proc_cpu_seconds(pid, children=True) - cpu0
            main = main_thread_cpu(pid) - main0
            workers = {
                command_name(c): (proc_cpu_seconds(c) - kids0.get(c, 0.0), peak_rss_mb(c))
                for c in children(pid)
            }
            # smtp-source is the only child reaped meanwhile (the node and sink still run).
            source_cpu, sink_cpu = _children_cpu() - ru0, sink.cpu_seconds() - sink0
            rss = peak_rss_mb(pid)
            if sink.messages < messages:
                say(f"  INCOMPLETE: sink has {sink.messages}/{messages}; node log tail:")
                say(node.log_tail(2000))
        finally:
            node.stop()
    # All of Postline's CPU: the node and its workers (Postfix's is summed over its processes).
    total = cpu + sum(c for c, _ in workers.values())
    result = RunResult("postline", sink.messages, end - t0, total, rss)
    run = RelayRun(result, messages, inject, status, err, main, source_cpu, sink_cpu)
    run.workers = workers
    return run


def main_thread_cpu(pid: int) -> float:
    """utime + stime of ``pid``'s main thread (the event loop) alone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    rest = data[data.rindex(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_delivered(
    sink: SmtpSink, source: Source, target: int, t0: float, limit: float, say: Say
) -> tuple[float, float]:
    """Until the sink has ``target`` messages, or it stalls after smtp-source is done, or
    ``limit`` seconds; returns (injection seconds, end time)."""
    inject = 0.0
    next_report = t0 + 1.0
    last_count, last_move = -1, t0
    while not sink.wait_for(target, 0.01):
        now = time.monotonic()
        if not inject and source.poll() is not None:
            inject = now - t0
            say(f"  {inject:7.2f}s smtp-source exited with status {source.poll()}")
        if sink.messages != last_count:
            last_count, last_move = sink.messages, now
        elif inject and now - last_move > STALL_SECONDS:
            say(f"  the sink has not moved for {STALL_SECONDS:.0f}s: giving up")
            return inject, now
        if now - t0 > limit:
            say(f"  timeout after {limit:.0f}s")
            return inject or now - t0, now
        if now >= next_report:
            next_report += 1.0
            say(f"  {now - t0:7.2f}s injected {source.sent:>8}  delivered {sink.messages:>8}")
    end = time.monotonic()
    if not inject:
        source.proc.wait(timeout=30)  # the sink has all: smtp-source is saying QUIT
        inject = time.monotonic() - t0
    return inject, end


# -- the run --------------------------------------------------------------------------------


def run_peer(messages: int, sessions: int, size: int, say: Say) -> RunResult:
    from bench.postfix_peer import run_postfix

    peer = run_postfix(messages, size=size, sessions=sessions, progress=say)
    if not peer.complete or peer.source_status != 0:
        say(f"  postfix INCOMPLETE: {peer.delivered}/{messages}, smtp-source status "
            f"{peer.source_status} {peer.source_stderr.strip()}")  # fmt: skip
    res = RunResult("postfix", peer.delivered, peer.seconds, peer.cpu_seconds, peer.peak_rss_mb)
    say(res.line() + f" (RSS summed over ~40 processes; PSS {peer.peak_pss_mb:.0f} MB)")
    say(f"  CPU beside Postfix: smtp-source {peer.source_cpu_seconds:.2f} s, "
        f"smtp-sink {peer.sink_cpu_seconds:.2f} s")  # fmt: skip
    return res


def ratios(ours: RunResult, peer: RunResult) -> str:
    return (
        f"ratio {ours.label} / {peer.label}: {ours.rate / peer.rate:.2f}x throughput, "
        f"{peer.cpu_per_million / ours.cpu_per_million:.2f}x less CPU per message, "
        f"peak memory {ours.peak_rss_mb:.0f} MB vs {peer.peak_rss_mb:.0f} MB RSS"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="postline bench smtp", description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000, help="messages per run")
    ap.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    ap.add_argument("--size", type=int, default=2048, help="message payload bytes (-l)")
    ap.add_argument("--no-postfix", action="store_true", help="skip the Postfix peer run")
    ap.add_argument("--no-postline", action="store_true", help="skip the Postline run")
    ap.add_argument(
        "--relay-in-node", action="store_true",
        help="run the relay in the node's process ([smtp] worker = false), for comparison",
    )  # fmt: skip
    ap.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="the node's log level (info: a line per outcome, as deployed; default %(default)s)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"{args.messages} messages of {args.size} bytes over {args.sessions} sessions")
    ours: RelayRun | None = None
    if not args.no_postline:
        say("postline -> smtp-sink:")
        with tempfile.TemporaryDirectory(prefix="pl-smtp-", dir=".") as tmp:
            ours = run_postline(
                args.messages, args.sessions, args.size, Path(tmp), say, args.log_level,
                relay_worker=not args.relay_in_node,
            )  # fmt: skip
        say(ours.result.line() + f" (injection {ours.inject_seconds:.2f} s)")
        workers = ours.workers or {}
        main = ours.main_cpu_seconds
        rest = ours.result.cpu_seconds - main - sum(c for c, _ in workers.values())
        say(
            f"  node CPU: event-loop thread {main:.2f} s "
            f"({main / ours.result.seconds:.0%} of the wall time), other threads {rest:.2f} s"
        )
        for name, (cpu, peak) in sorted(workers.items()):
            say(f"  worker {name}: CPU {cpu:.2f} s, peak RSS {peak:.0f} MB (in the total)")
        say(f"  CPU beside the node: smtp-source {ours.source_cpu_seconds:.2f} s, "
            f"smtp-sink {ours.sink_cpu_seconds:.2f} s")  # fmt: skip
        if ours.source_status != 0:
            say(f"  smtp-source status {ours.source_status}: {ours.source_stderr.strip()}")
    peer: RunResult | None = None
    if not args.no_postfix:
        say(f"postfix -> smtp-sink, fed by smtp-source -d -s {args.sessions} -l {args.size}:")
        peer = run_peer(args.messages, args.sessions, args.size, say)
    if ours is not None and peer is not None and peer.messages and ours.result.messages:
        say(ratios(ours.result, peer))
    return 0 if ours is None or ours.complete else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
