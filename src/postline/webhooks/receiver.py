"""A webhook receiver on loopback for tests and benchmarks (aiohttp, in a thread of its own).

Every POST is kept (headers, body) and answered with ``status`` after ``delay`` seconds;
``down()`` closes the listening socket (connections are refused) and ``up()`` listens again
on the same port. With ``verify`` set, each body is checked as it arrives and the result
kept with it (tests pass the official client's ``EventWebhook`` helper). ``count_only``
keeps no bodies, only the number of events (the benchmark). ``GET /count`` answers
"<events> <posts>"; ``python -m postline.webhooks.receiver`` runs a counting receiver in a
process of its own and prints its port (bench/webhooks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

from postline.testing.listeners import close_listener

Verify = Callable[[bytes, dict[str, str]], bool]


@dataclass(frozen=True, slots=True)
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes
    verified: bool | None  # None: no verify function


class WebhookReceiver:
    def __init__(
        self, verify: Verify | None = None, *, count_only: bool = False, port: int = 0
    ) -> None:
        self.verify = verify
        self.count_only = count_only
        self.status = 200
        self.delay = 0.0
        self.posts: list[Received] = []
        self.events = 0  # events received in 2xx-answered posts
        self.attempts = 0  # every request, whatever it was answered
        self.port = port
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def down(self) -> None:
        self._call(self._unlisten())

    def up(self) -> None:
        self._call(self._listen())

    def wait_events(self, n: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events >= n:
                return True
            time.sleep(0.02)
        return self.events >= n

    def bodies(self) -> list[Received]:
        with self._lock:
            return list(self.posts)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        app.router.add_get("/count", self._count)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _unlisten(self) -> None:
        if self._site is not None:
            server = self._site._server  # aiohttp has no public accessor
            if isinstance(server, asyncio.Server):  # a post racing the close leaks no socket
                await close_listener(server)
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:  # kept-alive ones too
                conn.force_close()

    async def _stop(self) -> None:
        await self._unlisten()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _count(self, request: web.Request) -> web.Response:
        return web.Response(text=f"{self.events} {self.attempts}")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, delay = self.status, self.delay
        self.attempts += 1
        if delay:
            await asyncio.sleep(delay)
        if 200 <= status < 300:
            if self.count_only:
                self.events += body.count(b'"sg_event_id"')
            else:
                headers = {k.lower(): v for k, v in request.headers.items()}
                verified = None if self.verify is None else self.verify(body, headers)
                with self._lock:
                    self.posts.append(Received(headers, body, verified))
                    self.events += body.count(b'"sg_event_id"')
        return web.Response(status=status)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m postline.webhooks.receiver",
        description="A webhook receiver on loopback: answers 200 to every POST and counts "
        "the events (GET /count); with --print, prints one line per event.",
    )
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any)")
    ap.add_argument("--print", action="store_true", help="print each event as it arrives")
    args = ap.parse_args(argv)

    def show(body: bytes, headers: dict[str, str]) -> bool:
        signed = "x-twilio-email-event-webhook-signature" in headers
        for e in json.loads(body):
            print(
                f"webhook got {e.get('event')} {e.get('email')} {e.get('sg_message_id')}"
                + (" (signed)" if signed else ""),
                flush=True,
            )
        return True

    with WebhookReceiver(
        show if args.print else None, count_only=not args.print, port=args.port
    ) as receiver:
        print(f"webhook receiver on http://127.0.0.1:{receiver.port}/", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
