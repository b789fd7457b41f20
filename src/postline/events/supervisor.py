"""The node's side of the event pipeline worker (events/worker.py): start it, forward the
pipeline's API to it, read its metrics, restart it when it dies, stop it.

Whatever happens to the worker, the mail path does not wait for it: the log keeps the
events, and a restarted worker resumes from its consumers' offsets. While it is down its
API answers 503 with Retry-After and ``postline_pipeline_worker_up`` is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import aiohttp
import msgspec

from postline import config as config_mod
from postline.api.errors import unavailable
from postline.api.prometheus import Family
from postline.api.types import Request, Response
from postline.child import Supervised
from postline.events.worker import socket_path

log = logging.getLogger("postline.events")

START_TIMEOUT = 60.0  # seconds the node waits for a starting worker (DuckDB opening)
STOP_TIMEOUT = 20.0  # then SIGKILL
FORWARD_TIMEOUT = 60.0  # an activity query has 10 s; a replay request returns at once
FORWARDED = ("authorization", "content-type", "accept")


class PipelineWorker(Supervised):
    what = "event pipeline worker"

    def __init__(self, cfg: config_mod.Config) -> None:
        super().__init__(log)
        self.cfg = cfg
        self.path = socket_path(cfg.data_dir)
        self._answering = asyncio.Event()  # set while the worker answers
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Start the worker in the background: the node does not wait for it (a worker
        takes ~1 s to import and open its stores); requests to its API wait until it
        answers, up to ``START_TIMEOUT``."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.path)),
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
        )
        self._supervise_soon()

    async def _spawn(self) -> asyncio.subprocess.Process:
        cmd = [sys.executable, "-m", "postline.events.worker"]
        self.proc = proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(msgspec.json.encode(config_mod.to_dict(self.cfg)))
        proc.stdin.close()
        if await self._ready(proc, START_TIMEOUT):
            self._answering.set()
        return proc

    def _went_down(self) -> None:
        self.up = False
        self._answering.clear()

    async def forward(self, req: Request) -> Response:
        """A request of the pipeline's API, answered by the worker."""
        session = self._session
        if not self.up and session is not None and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answering.wait(), START_TIMEOUT)
        if not self.up or session is None:
            return unavailable("the event pipeline is starting", 5).response()
        url = f"http://pipeline{req.path}" + (f"?{req.query}" if req.query else "")
        headers = {k: v for k, v in req.headers.items() if k in FORWARDED}
        try:
            async with session.request(req.method, url, headers=headers, data=req.body) as r:
                body = await r.read()
                kept = [(k, v) for k, v in r.headers.items() if k.lower() in ("retry-after",)]
                return Response(r.status, body, kept, r.headers.get("content-type"))
        except (aiohttp.ClientError, TimeoutError, OSError):
            return unavailable("the event pipeline did not answer", 5).response()

    async def families(self) -> list[Family]:
        up = Family.one(
            "pipeline_worker_up", "gauge", "1 while the event pipeline worker answers.", 0.0
        )
        restarts = Family.one(
            "pipeline_worker_restarts_total",
            "counter",
            "Times the event pipeline worker was started again after it exited.",
            self.restarts,
        )
        session = self._session
        if not self.up or session is None:
            return [up, restarts]
        try:
            async with session.get("http://pipeline/families") as r:
                raw = msgspec.json.decode(await r.read())
        except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError):
            return [up, restarts]
        fams = [
            Family(name, kind, help, tuple((tuple(tuple(p) for p in lab), v) for lab, v in samples))
            for name, kind, help, samples in raw
        ]
        return [Family.one(up.name, up.kind, up.help, 1.0), restarts, *fams]

    async def stop(self) -> None:
        await self._stop_process(STOP_TIMEOUT)
        if self._session is not None:
            await self._session.close()
        self.up = False
