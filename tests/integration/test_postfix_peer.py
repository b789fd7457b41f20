"""Smoke test of the Postfix peer benchmark: a private Postfix instance relays to smtp-sink.

Needs Debian's postfix package (smtp-sink, smtp-source, postfix) and root, as the
benchmark does; skipped otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from bench.postfix_peer import run_postfix
from bench.sink import SmtpSink, find_tool, finish_source

pytestmark = pytest.mark.timeout(30)


def _have_postfix() -> bool:
    try:
        for tool in ("postfix", "smtp-sink", "smtp-source"):
            find_tool(tool)
    except FileNotFoundError:
        return False
    return True


needs_postfix = pytest.mark.skipif(
    not _have_postfix() or os.geteuid() != 0,
    reason="needs root and Debian's postfix package (postfix, smtp-sink, smtp-source)",
)


@needs_postfix
def test_sink_counts_messages() -> None:
    with SmtpSink() as sink:
        assert sink.pid > 0
        with closing(socket.create_connection(("127.0.0.1", sink.port), timeout=5)):
            pass
        subprocess.run(
            [find_tool("smtp-source"), "-s", "2", "-m", "10", "-l", "100",
             "-f", "a@example.com", "-t", "b@example.com", f"127.0.0.1:{sink.port}"],
            check=True, timeout=10,
        )  # fmt: skip
        assert sink.wait_for(10, timeout=5)
        assert sink.messages == 10
        assert sink.cpu_seconds() >= 0.0
    assert sink.messages == 10  # the count survives stop()


@needs_postfix
def test_run_postfix_small() -> None:
    # workdir=None: the system temp dir, which the postfix user can search (tmp_path may not be).
    res = run_postfix(messages=200, size=512, sessions=5, timeout=20)
    assert res.source_status == 0, res.source_stderr
    assert res.delivered == 200
    assert res.complete
    assert res.rate > 0
    assert res.seconds > 0
    assert res.cpu_seconds > 0
    assert res.peak_rss_mb > 0
    # The instance is stopped and its directory removed.
    assert res.instance_dir
    assert not Path(res.instance_dir).exists()
    assert _instance_processes(Path(res.instance_dir)) == []


@needs_postfix
def test_unsearchable_workdir_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not searchable"):
        run_postfix(messages=1, workdir=private)


def _instance_processes(root: Path) -> list[int]:
    """Processes whose MAIL_CONFIG (set for the master and every daemon) is under root."""
    prefix = b"MAIL_CONFIG=" + str(root).encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if any(e.startswith(prefix) for e in env):
                found.append(int(name))
    return found


def test_finish_source_lets_a_finishing_injector_exit() -> None:
    # The sink may count every message while smtp-source still reads its last replies:
    # an injector that takes a moment to exit is waited for, not killed (its status was -9).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert finish_source(proc, grace=10) == 0
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert finish_source(stuck, grace=0.2) == -9
