"""How every long-lived NATS connection of a node is made (spool, event log, membership).

Why these options (issue 15, the chaos test's findings):

* **Servers in random order.** ``dont_randomize=True`` (set with the first R3 kill test, so
  that ``kill(0)`` always hit the server the spool was connected to) put every node on the
  first server: killing it cut every node at once, and each lost the requests in flight on
  that connection and waited out their timeouts (both nodes stalled 5-7 s). Shuffled, the
  nodes spread over the servers and one server's loss cuts only its share of them; the
  kill tests now kill the server their client is on (:func:`connected_index`).
* **A dead server noticed in 2-3 s.** A killed process on loopback closes its sockets, but
  a machine that is lost (power, network) closes nothing: nats-py then relies on pings,
  by default every 120 s with 2 outstanding, so four to six minutes of a silent
  connection. A ping every PING_INTERVAL, dropped when a third ping finds
  MAX_OUTSTANDING_PINGS unanswered: 2-3 s. Not 1: a pong read late because the event loop
  was busy for a second would then drop a live connection, and a reconnect loses the
  requests in flight (each waits out its timeout).
* **Reconnect at once.** The next server is tried without waiting; a server tried within
  RECONNECT_WAIT is only retried after that pause (nats-py's rule), so a cluster with every
  server down is not hammered.
* **One log line per error, not a traceback per try.** nats-py logs every failed connect
  with its traceback: a node started while its NATS was down wrote 180 of them in the 90 s
  it waited. The same error is logged once per ERROR_LOG_EVERY seconds, as a warning that
  names the servers and the error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client

PING_INTERVAL = 1  # seconds between pings (nats-py default: 120)
MAX_OUTSTANDING_PINGS = 2  # pings without a pong before the connection is dropped
RECONNECT_WAIT = 0.5  # seconds before a server that just failed is tried again (default 2)
CONNECT_TIMEOUT = 2.0  # seconds for one server to answer a connect
ERROR_LOG_EVERY = 10.0  # seconds between two log lines of the same connection error

log = logging.getLogger("postline.nats")


def options() -> dict[str, Any]:
    """The connection options (also for callers that add their own, e.g. ``error_cb``)."""
    return {
        "max_reconnect_attempts": -1,
        "dont_randomize": False,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "reconnect_time_wait": RECONNECT_WAIT,
        "connect_timeout": CONNECT_TIMEOUT,
    }


async def connect(
    servers: Sequence[str], error_cb: Callable[[Exception], Awaitable[None]] | None = None
) -> Client:
    """A connection to one of ``servers`` (a random one), reconnecting forever."""
    cb = error_cb if error_cb is not None else logged_errors(servers)
    return await nats.connect(list(servers), **options(), error_cb=cb)


async def connect_briefly(
    servers: Sequence[str],
    *,
    timeout: float = 5.0,
    attempts: int = 2,
    dont_randomize: bool = False,
) -> Client:
    """A short-lived connection for an operator command (status, audit, failover): a few
    tries, then nats-py's error; its own error log silenced (the command says what failed).
    (max_reconnect_attempts=0 makes nats-py 2.16 wait forever on a refused connect.)"""

    async def quiet(exc: Exception) -> None:
        pass

    return await nats.connect(
        list(servers), connect_timeout=timeout, max_reconnect_attempts=attempts,
        reconnect_time_wait=0.2, dont_randomize=dont_randomize, error_cb=quiet,
    )  # fmt: skip


def logged_errors(
    servers: Sequence[str], clock: Callable[[], float] = time.monotonic
) -> Callable[[Exception], Awaitable[None]]:
    """An ``error_cb`` that logs each distinct error at most once per ERROR_LOG_EVERY."""
    last: dict[str, float] = {}

    async def error_cb(exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        now = clock()
        if text in last and now - last[text] < ERROR_LOG_EVERY:
            return
        last[text] = now
        log.warning("NATS connection error", extra={"servers": list(servers), "error": text})

    return error_cb


def connected_index(nc: Client, servers: Sequence[str]) -> int | None:
    """Which of ``servers`` the connection is on (tests kill that one), None if none."""
    url = nc.connected_url
    if url is None:
        return None
    for i, server in enumerate(servers):
        if server.rstrip("/").endswith(f"{url.hostname}:{url.port}"):
            return i
    return None


async def close(nc: Client, before: Callable[[], Awaitable[None]] | None = None) -> None:
    """Close a connection: ``before`` first (unsubscribing what waits on it), then drain,
    then close even when the drain failed (its final flush can raise: a server gone),
    so no socket is left open."""
    if before is not None:
        await before()
    with contextlib.suppress(Exception):  # a server gone: drain may time out
        await nc.drain()
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()
