"""One log line per delivery outcome, Postfix-style: greppable, cheap, never per command.

A line is a JSON object like the rest of the log (``postline.log``), on the logger
``postline.outcome``::

    {"ts":1764239021.412,"level":"info","logger":"postline.outcome","msg":"outcome",
     "tenant":"default","sg_message_id":"Vb3….pl1.0","recipient":"bob@example.com",
     "relay":"127.0.0.1:2526","delay":0.41,"attempt":1,"status":"sent","dsn":"2.0.0",
     "reply":"250 2.0.0 Ok: queued as 4F1A"}

``status`` is one of sent, deferred, bounced, dropped (suppressed at accept, or purged by
the operator), expired; ``relay`` is ``host[ip]:port`` of the server that answered
(``ip:port`` when the host name is not known here, ``none`` when no server answered);
``delay`` is seconds since the message was accepted.

Cost: through ``logging`` with the JSON formatter a line costs ~15 µs (a LogRecord, a dict
per line, a flush and a write(2) per line); at 10k outcomes/s that is 15 % of a core.
Lines are instead encoded with msgspec from a Struct (~1.5 µs) and handed to ``logging``
in batches (``log.RawLines``), so they still go wherever the log goes, one write per
batch. A batch is what gathered in ``FLUSH_EVERY`` (sessions finish their jobs in
separate loop turns, so a flush per turn still cost ~20 µs a line), at most
``FLUSH_LINES``; what is pending when the process exits is written by an atexit hook
(a kill -9 loses at most the last ``FLUSH_EVERY`` of lines: this is a log, not state).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
import weakref
from collections.abc import Callable, Mapping

import msgspec

from postline.config import Config
from postline.log import RawLines
from postline.model.events import DROPPED as DROPPED_EVENT
from postline.spool.interface import AcceptBatch

SMTP_PORT = 25
LEVELS = {"info": logging.INFO, "debug": logging.DEBUG}
_LEVEL_NAMES = {logging.INFO: "info", logging.DEBUG: "debug"}

FLUSH_EVERY = 0.1  # seconds a line may wait to be written with others
FLUSH_LINES = 1000  # or this many lines

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"
DROPPED = "dropped"
EXPIRED = "expired"


class OutcomeLine(msgspec.Struct, array_like=False):
    """The fields of one line, in the order they are written."""

    ts: float
    level: str
    logger: str
    msg: str
    tenant: str
    sg_message_id: str
    recipient: str
    relay: str
    delay: float
    attempt: int
    status: str
    dsn: str
    reply: str


_encode = msgspec.json.Encoder().encode


class Relays:
    """Which port (and, for a static route, which host) a domain's mail goes to.

    The outcome carries the IP address the connection went to; the port and host name
    follow from the routing config exactly as ``deliver.mx.Router`` applies it: a static
    route (the domain's, else ``*``) names host:port; otherwise the MX hosts are
    contacted on ``delivery.mx_port``, and an address literal on port 25.
    """

    def __init__(self, routes: Mapping[str, str], mx_port: int) -> None:
        self._static = {k.lower().rstrip("."): _host_port(v) for k, v in routes.items()}
        self._mx_port = mx_port

    def relay(self, domain: str, ip: str) -> str:
        if not ip:
            return "none"
        host, port = self._static.get(domain) or self._static.get("*") or ("", 0)
        if not port:
            port = SMTP_PORT if domain.startswith("[") else self._mx_port
        where = f"[{ip}]" if ":" in ip else ip
        if host and host != ip:
            where = f"{host}[{ip}]"
        return f"{where}:{port}"


def _host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return target.strip("[]"), SMTP_PORT
    return host.strip("[]"), int(port)


def dsn_of(reply: str) -> str:
    """The enhanced status code of an SMTP reply ("550 5.1.1 ..." -> "5.1.1"), or ""."""
    word = reply[4:].split(" ", 1)[0] if len(reply) > 8 and reply[3] in " -" else ""
    if len(word) >= 5 and word[0] in "245" and word[1] == "." and word[2].isdigit():
        return word
    return ""


class OutcomeLog:
    """Collects outcome lines and writes them in batches (see the module doc)."""

    def __init__(
        self,
        level: str = "info",
        relays: Relays | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.relays = relays or Relays({}, SMTP_PORT)
        self._levelno = LEVELS.get(level, 0)  # 0: off
        self._level = _LEVEL_NAMES.get(self._levelno, "")
        self._logger = logging.getLogger("postline.outcome")
        self._clock = clock
        self._lines: list[bytes] = []

    @classmethod
    def for_config(cls, cfg: Config, clock: Callable[[], float] = time.time) -> OutcomeLog:
        relays = Relays(cfg.delivery.routes, cfg.delivery.mx_port)
        return cls(cfg.log.outcomes, relays, clock)

    def enabled(self) -> bool:
        return self._levelno > 0 and self._logger.isEnabledFor(self._levelno)

    def line(
        self,
        *,
        tenant: str,
        sg_message_id: str,
        recipient: str,
        relay: str,
        created_at: float,
        attempt: int,
        status: str,
        reply: str,
        dsn: str = "",
    ) -> None:
        """Queue one line (the caller checked :meth:`enabled`); written this loop turn."""
        now = self._clock()
        line = OutcomeLine(
            round(now, 3),
            self._level,
            "postline.outcome",
            "outcome",
            tenant,
            sg_message_id,
            recipient,
            relay,
            round(now - created_at, 3),
            attempt,
            status,
            dsn or dsn_of(reply),
            reply,
        )
        lines = self._lines
        lines.append(_encode(line))
        if len(lines) == 1:
            self._schedule_flush()
        elif len(lines) >= FLUSH_LINES:
            self.flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a unit test): write at once
            self.flush()
            return
        _pending.add(self)
        loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Write the queued lines as one log record."""
        if not self._lines:
            return
        text = b"\n".join(self._lines).decode()
        self._lines = []
        self._logger.log(self._levelno, RawLines(text))

    def dropped(self, batch: AcceptBatch) -> None:
        """A line per recipient the accept stage dropped (on a suppression list)."""
        if not self.enabled():
            return
        for e in batch.events:
            if e.event == DROPPED_EVENT:
                data = msgspec.json.decode(e.data)
                reason = data.get("reason", "")
                self.line(
                    tenant=e.tenant,
                    sg_message_id=e.sg_message_id,
                    recipient=e.email,
                    relay="none",
                    created_at=batch.created_at,
                    attempt=0,
                    status=DROPPED,
                    reply=str(reason),
                    dsn=str(data.get("status", "")),
                )


_pending: weakref.WeakSet[OutcomeLog] = weakref.WeakSet()  # logs that may hold lines


@atexit.register
def _flush_at_exit() -> None:
    for outcome_log in list(_pending):
        outcome_log.flush()
