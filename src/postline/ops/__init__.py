"""The operator's commands: ``status``, ``messages``, ``queue``, ``suppressions``, ``audit``.

They read the spool beside a running node (read-only SQLite connections; no lock on the
data directory) and act through the node's control socket when one runs. One module per
command family; each has ``register(subparsers)`` and sets ``run`` on its parsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from postline.ops import audit, messages, queue, status, suppressions
from postline.ops.context import OpsError

COMMANDS = ("status", "messages", "queue", "suppressions", "audit")


def register(sub: Any) -> None:
    for module in (status, messages, queue, suppressions, audit):
        module.register(sub)


def normalize_argv(argv: Sequence[str] | None) -> list[str]:
    """Protect message ids that begin with '-' from argparse (an X-Message-Id is base64url,
    so 1 in 32 does): ``messages show -abc`` becomes ``--id=-abc`` and ``--message -abc``
    becomes ``--message=-abc``; argparse would take them for options otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i in range(1, len(args)):
        if args[i - 1] == "--message" and args[i].startswith("-"):
            args[i - 1 : i + 1] = [f"--message={args[i]}"]
            break
    if args[:2] == ["messages", "show"]:
        i = 2
        while i < len(args):  # skip the options; the first other word is the id
            word = args[i]
            if word == "--config":
                i += 2
            elif word in messages.OPTIONS or word.startswith("--config="):
                i += 1
            else:
                if word.startswith("-"):
                    args[i] = f"--id={word}"
                break
    return args


def run(args: argparse.Namespace) -> int:
    try:
        code: int = args.run(args)
    except OpsError as exc:
        print(f"postline: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `postline queue | head`
        return 0
    return code
