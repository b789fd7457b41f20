"""Peak memory of a process from /proc (Linux); CPU time is bench.sink.proc_cpu_seconds."""

from __future__ import annotations


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size of ``pid`` so far, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0
