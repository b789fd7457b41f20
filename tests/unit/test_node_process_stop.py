"""The test harness's NodeProcess.stop and stop_all: a node that ignores SIGTERM past the
timeout is killed before the error is raised, and stop_all stops every node even when one
fails. (A node left running by a failed test went on using CPU and ports beside every
later test and benchmark: four were found running 40 minutes later.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postline.testing.node import NodeProcess, stop_all

DEAF = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print(1, flush=True); time.sleep(60)"
)


def _deaf_node(tmp_path: Path, name: str) -> NodeProcess:
    (tmp_path / name).mkdir()
    node = NodeProcess(tmp_path / name)
    node.proc = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE)
    assert node.proc.stdout is not None
    node.proc.stdout.readline()  # SIGTERM is ignored from here on
    node.proc.stdout.close()
    return node


def test_a_node_that_does_not_stop_is_killed_before_the_error(tmp_path: Path) -> None:
    node = _deaf_node(tmp_path, "a")
    proc = node.proc
    assert proc is not None
    with pytest.raises(subprocess.TimeoutExpired):
        node.stop(timeout=0.3)
    assert proc.poll() is not None and node.proc is None


def test_stop_all_stops_the_rest_when_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [_deaf_node(tmp_path, n) for n in ("a", "b", "c")]
    procs = [n.proc for n in nodes]
    stop = NodeProcess.stop
    monkeypatch.setattr(NodeProcess, "stop", lambda self: stop(self, timeout=0.3))
    with pytest.raises(subprocess.TimeoutExpired):
        stop_all(nodes)
    assert all(p is not None and p.poll() is not None for p in procs)
