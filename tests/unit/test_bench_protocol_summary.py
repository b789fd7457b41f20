"""bench/aiosmtpd_compare.py's summary: a short run whose server read no CPU (it is read in
10 ms clock ticks) still prints its ratio line (a fresh-clone run of the 200-message test
failed on a division by zero so)."""

from __future__ import annotations

from bench.aiosmtpd_compare import ProtoRun, summary


def test_a_server_that_read_no_cpu_still_gets_a_ratio_line() -> None:
    runs = [ProtoRun("postline", 200, 0.03, 0.0, 0), ProtoRun("aiosmtpd", 200, 0.07, 0.05, 0)]
    lines = summary(runs)
    assert lines[-1].startswith("ratio postline / aiosmtpd: 2.33x throughput, CPU too small")


def test_the_cpu_ratio_when_both_read_cpu() -> None:
    runs = [ProtoRun("postline", 200, 0.03, 0.01, 0), ProtoRun("aiosmtpd", 200, 0.07, 0.05, 0)]
    assert summary(runs)[-1].endswith("5.00x less CPU per message")
