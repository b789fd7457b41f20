"""Peak memory of a process from /proc (Linux); CPU time is bench.sink.proc_cpu_seconds."""

from __future__ import annotations


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size of ``pid`` so far, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (its workers), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def command_name(pid: int) -> str:
    """A short name for a worker: its ``-m`` module, else its program."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return str(pid)
    if b"-m" in argv and argv.index(b"-m") + 1 < len(argv):
        return argv[argv.index(b"-m") + 1].decode(errors="replace")
    return argv[0].decode(errors="replace").rsplit("/", 1)[-1]
