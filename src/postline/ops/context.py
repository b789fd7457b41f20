"""What every operator command needs: the config, the data directory, the running node.

Nothing here takes a lock on the data directory: a node may run (``postline serve`` holds
``<data_dir>/lock``) and these commands read beside it. Whether a node runs is asked of
the node itself (its control socket); ``node.json``'s pid only explains a silent one.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postline import config as config_mod
from postline import control
from postline.backends.sqlite import admin, inspect

CLUSTERED = (
    "this command reads the embedded spool (spool.db), and this config runs in cluster mode,"
    " where the queue lives in JetStream and the lists in PostgreSQL: use `postline status`"
    " (every destination's queue in the cluster), `postline audit`, or the HTTP API"
    " (GET /v3/messages for what became of a message, /v3/suppression/... for the lists)"
)


class OpsError(Exception):
    """A command cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Context:
    cfg: config_mod.Config
    config_path: str | None
    data_dir: Path

    def whence(self) -> str:
        if self.config_path is None:
            return "the default, as no --config was given"
        return f"the data_dir of {self.config_path}"

    def embedded_only(self) -> None:
        """Refuse, saying what to use instead, when the config runs in cluster mode."""
        if self.cfg.clustered:
            raise OpsError(CLUSTERED, code=2)

    def read(self) -> sqlite3.Connection:
        """A read-only connection to the spool."""
        self.embedded_only()
        try:
            return inspect.open_readonly(self.data_dir)
        except inspect.NoSpool as exc:
            raise OpsError(f"{exc} [{self.whence()}]") from None

    def write(self) -> sqlite3.Connection:
        self.read().close()  # the same helpful error when there is no spool
        return admin.open_readwrite(self.data_dir)


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the node's TOML config file, to find its data_dir (default: ./postline-data)",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def context(args: argparse.Namespace) -> Context:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        raise OpsError(f"config error: {exc}", code=2) from None
    ctx = Context(cfg, args.config, Path(cfg.data_dir).resolve())
    if not ctx.data_dir.is_dir():
        raise OpsError(
            f"no data directory at {ctx.data_dir} ({ctx.whence()}); run this where the node "
            "runs, or pass the node's --config FILE"
        )
    return ctx


@dataclass(slots=True)
class NodeState:
    running: bool  # the node answers on its control socket
    pid: int | None = None  # from its answer, else from node.json
    pid_alive: bool = False
    info: dict[str, Any] | None = None


def node_state(ctx: Context) -> NodeState:
    try:
        info = control.request(ctx.data_dir, "info", timeout=10)
    except (control.NoNode, OSError, ValueError):
        pid = _node_json_pid(ctx.data_dir)
        return NodeState(False, pid, pid is not None and _alive(pid))
    return NodeState(True, int(info.get("pid", 0)) or None, True, info)


def ask_node(ctx: Context, cmd: str, timeout: float = 600.0, **args: Any) -> dict[str, Any] | None:
    """The node's answer to a command, or None when no node runs (act on the spool then).

    Refuses when a node process seems alive but does not answer: acting on the spool
    behind its back would leave its in-memory queues wrong.
    """
    try:
        reply = control.request(ctx.data_dir, cmd, timeout=timeout, **args)
    except control.NoNode:
        pid = _node_json_pid(ctx.data_dir)
        if pid is not None and _alive(pid):
            raise OpsError(
                f"a node (pid {pid}) seems to run on {ctx.data_dir} but its control socket "
                f"{control.socket_path(ctx.data_dir)} does not answer; wait until it has "
                "started (`postline wait`), or stop it, and try again"
            ) from None
        return None
    if not reply.get("ok"):
        raise OpsError(f"the node refused: {reply.get('error', 'no reason given')}")
    return reply


def _node_json_pid(data_dir: Path) -> int | None:
    try:
        pid = json.loads((data_dir / "node.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None
    return pid if isinstance(pid, int) else None


def _alive(pid: int) -> bool:
    """The process exists and (where /proc tells) is a postline process, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"postline" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
