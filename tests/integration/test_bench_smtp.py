"""Smoke runs of the SMTP benchmarks with a tiny load: they run and print every figure.

No timing is asserted (a test never asserts wall-clock time); the figures themselves come
from ``postline bench smtp`` and ``postline bench smtp-protocol`` at full load. Needs
Debian's postfix package (smtp-source, smtp-sink; ``bench smtp`` also Postfix and root).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench.sink import SmtpSink, find_tool
from bench.smtp_relay import Source

pytestmark = pytest.mark.timeout(60)


def _have(*tools: str) -> bool:
    try:
        for tool in tools:
            find_tool(tool)
    except FileNotFoundError:
        return False
    return True


needs_source = pytest.mark.skipif(
    not _have("smtp-source", "smtp-sink"), reason="needs smtp-source and smtp-sink (postfix)"
)
needs_listener = pytest.mark.skipif(
    importlib.util.find_spec("postline.smtp.server") is None,
    reason="the SMTP relay listener (postline.smtp.server, wired into serve) is not there yet",
)
needs_postfix = pytest.mark.skipif(
    not _have("postfix", "smtp-source", "smtp-sink") or os.geteuid() != 0,
    reason="needs root and Debian's postfix package (postfix, smtp-sink, smtp-source)",
)

FIGURES = r"(\d+) msgs +[\d.]+ s +\d+ msg/s +\d+ CPU-s/M msgs"


def _bench(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postline.cli", "bench", *args],
        cwd=cwd, capture_output=True, text=True, timeout=50,
    )  # fmt: skip


@needs_source
def test_source_counts_what_the_sink_got() -> None:
    with SmtpSink() as sink:
        source = Source(sink.port, messages=30, sessions=3, size=100)
        source.proc.wait(timeout=20)
        status, err = source.finish()
        assert status == 0, err
        assert sink.wait_for(30, timeout=5)
    assert source.sent == 30  # smtp-source's -c counter, read to the end


@needs_source
def test_smtp_protocol_prints_both_servers(tmp_path: Path) -> None:
    out = _bench(tmp_path, "smtp-protocol", "--messages", "200", "--runs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    for kind in ("postline", "aiosmtpd"):
        m = re.search(rf"run 1 +{kind} +{FIGURES} \(server\)", out.stdout)
        assert m is not None, out.stdout
        assert int(m.group(1)) == 200  # the server's own count: every message answered
        assert re.search(rf"{kind} +median of 1:", out.stdout), out.stdout
    assert "ratio postline / aiosmtpd:" in out.stdout


@needs_listener
@needs_postfix
def test_smtp_relay_prints_postline_postfix_and_ratio(tmp_path: Path) -> None:
    out = _bench(tmp_path, "smtp", "--messages", "200", "--sessions", "5", "--size", "512")
    assert out.returncode == 0, out.stdout + out.stderr
    for label in ("postline", "postfix"):
        m = re.search(rf"^  {label} +{FIGURES} +peak +[\d.]+ MB", out.stdout, re.M)
        assert m is not None, out.stdout
        assert int(m.group(1)) == 200  # what the sink counted
    assert "SMTP on 127.0.0.1:" in out.stdout  # the node's listener was probed, then fed
    assert re.search(r"ratio postline / postfix: [\d.]+x throughput", out.stdout), out.stdout
    assert list(tmp_path.iterdir()) == []  # the node's temporary data_dir is gone
