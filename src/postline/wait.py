"""``postline wait``: block until the node on this data_dir accepts mail (``/healthz`` 200).

So that a script (the README's Quick start, a deploy) can start ``postline serve`` in the
background and go on only when sending will work, instead of racing the start.
"""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import msgspec

from postline.config import Config


def node_port(cfg: Config) -> int | None:
    """The HTTP port of the node running on ``cfg.data_dir``, or None when none runs."""
    path = Path(cfg.data_dir) / "node.json"
    try:
        info = msgspec.json.decode(path.read_bytes())
        pid, port = int(info["pid"]), int(info["http_port"])
    except (OSError, msgspec.DecodeError, KeyError, TypeError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a node.json left by a node that has stopped
    except PermissionError:
        pass  # alive, owned by another user
    return port


def healthy(host: str, port: int) -> str | None:
    """None when ``/healthz`` answers 200, else what it said (or why it could not)."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return None if resp.status == 200 else f"HTTP {resp.status} {body}"
    except OSError as exc:
        return str(exc)
    finally:
        conn.close()


def wait_healthy(cfg: Config, timeout: float) -> tuple[bool, str]:
    """Poll until the node answers 200; (ok, what was seen last)."""
    host = cfg.http.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    deadline = time.monotonic() + timeout
    last = f"no node running on {Path(cfg.data_dir).resolve()} yet"
    while True:
        port = node_port(cfg)
        if port is not None:
            problem = healthy(host, port)
            if problem is None:
                return True, f"node on {host}:{port} accepts mail"
            last = f"node on {host}:{port}: {problem}"
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(0.1)
