"""Run a real ``postline serve`` process for tests and benchmarks.

The node gets its own data dir and config file; ``http.listen`` on port 0 picks a free
port, which the node reports in ``<data_dir>/node.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomli_w


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def postline_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "postline.cli", *args]


class NodeProcess:
    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        defaults: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "http": {"listen": "127.0.0.1:0"},
            "smtp": {"listen": "127.0.0.1:0"},
            "log": {"level": "warning"},
        }
        self.config = _deep_merge(defaults, config or {})
        self.config_path = workdir / "postline.toml"
        self.config_path.write_text(tomli_w.dumps(self.config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.smtp_ports: list[int] = []  # smtp.listen ports, then smtp.tls_listen ports

    @property
    def smtp_port(self) -> int:
        return self.smtp_ports[0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        node_file = self.data_dir / "node.json"
        node_file.unlink(missing_ok=True)
        with open(self.workdir / "node.log", "ab") as log:
            self.proc = subprocess.Popen(
                postline_cmd("serve", "--config", str(self.config_path)), stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log_tail()}")
            if node_file.exists():
                info = json.loads(node_file.read_text())
                if info.get("pid") == self.proc.pid:
                    self.http_port = int(info["http_port"])
                    self.smtp_ports = [int(p) for p in info.get("smtp_ports", [])]
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"node did not start within {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        path = self.workdir / "node.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def create_key(self, scopes: str | None = None, tenant: str = "default") -> str:
        args = ["keys", "create", "--name", "test", "--tenant", tenant]
        if scopes is not None:
            args += ["--scopes", scopes]
        out = subprocess.run(
            postline_cmd(*args, "--config", str(self.config_path)),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the node and wait for it; one that has not exited within ``timeout`` is
        killed (its workers die with it) before TimeoutExpired is raised, so a failed test
        leaves no node running beside the next ones."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def stop_all(nodes: Iterable[NodeProcess]) -> None:
    """Stop every node, even when one of them fails to stop; then raise the first error."""
    first: BaseException | None = None
    for node in nodes:
        try:
            node.stop()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first
