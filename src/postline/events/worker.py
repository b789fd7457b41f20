"""The event pipeline's worker: a process of its own beside the node.

Why a process: the pipeline's consumers (activity store, stats, one dispatcher per
webhook) cost ~90 µs of Python per message with a webhook on; in the node's process they
shared its GIL and cut the end-to-end mail rate by 28% (``postline bench e2e --pipeline``).
Here they run on the second core, and a consumer that crashes or stalls cannot touch the
mail path at all.

The node starts it (events/supervisor.py) with its config as JSON on stdin. The worker
reads the event log from ``spool.db`` beside the node (backends/sqlite/eventlog.py), owns
``activity.duckdb``, ``stats.db`` and ``webhooks.db``, and answers the pipeline's API
(webhooks, /v3/messages, stats) on ``<data_dir>/pipeline.sock``, where the node forwards
those requests; ``GET /families`` gives its metrics as JSON for the node's ``/metrics``.
It prints ``ready`` once it answers, and exits when the node does (PR_SET_PDEATHSIG, and
a check of its parent), SIGTERM stopping it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import msgspec

from postline import config as config_mod
from postline import log as log_setup
from postline.api.app import App
from postline.api.auth import KeyCache
from postline.api.auth_failures import FailedAuth
from postline.api.http import HttpServer
from postline.api.types import Request, Response
from postline.child import die_with_parent
from postline.cluster.adopted import adopted_watcher
from postline.cluster.backends import close_keys, open_worker_backends
from postline.events.pipeline import Pipeline

log = logging.getLogger("postline.events")

SOCKET = "pipeline.sock"


def socket_path(data_dir: str | Path) -> Path:
    return Path(data_dir).resolve() / SOCKET


async def run(cfg: config_mod.Config, parent: int) -> None:
    events, keys = await open_worker_backends(cfg)  # spool.db's, or the cluster's
    app = App(KeyCache(keys), FailedAuth(cfg.http.auth_fail_limit, cfg.http.auth_fail_delay))
    pipeline = Pipeline(cfg, events)
    adopted = adopted_watcher(cfg, events)  # lost datacenters' consumers (cluster/adopted.py)
    server = HttpServer(app, cfg.http, admit=app.admit)

    async def families(req: Request) -> Response:
        fams = await pipeline.families()
        if adopted is not None:
            fams += adopted.families(time.time())
        body = [[f.name, f.kind, f.help, [[list(lab), v] for lab, v in f.samples]] for f in fams]
        return Response(200, msgspec.json.encode(body))

    app.add("GET", "/families", families)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    path = socket_path(cfg.data_dir)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        await pipeline.start(app)
        if adopted is not None:
            adopted.start()
        await server.start_unix(str(path))
        print("ready", flush=True)
        while not stop.is_set():
            if os.getppid() != parent:  # the node is gone (no PDEATHSIG where unsupported)
                log.warning("the node stopped; the event pipeline worker stops too")
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await server.stop(grace=2.0)
        if adopted is not None:
            await adopted.close()
        await pipeline.close()
        await events.close()
        close_keys(keys)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def main() -> int:
    die_with_parent()
    parent = os.getppid()
    try:
        cfg = config_mod.from_dict(msgspec.json.decode(sys.stdin.buffer.read()), "<node>")
    except (config_mod.ConfigError, msgspec.DecodeError) as exc:
        print(f"postline pipeline worker: bad config from the node: {exc}", file=sys.stderr)
        return 2
    log_setup.setup(cfg.log.level)
    import uvloop

    uvloop.run(run(cfg, parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
